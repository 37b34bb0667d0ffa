"""inference_extension_plugin_duration_seconds: every plugin of the reference config timed, on one
scheduling cycle in `every`, under its extension point, type and name."""

from prometheus_client import CollectorRegistry

from epp.datalayer.endpoint import Endpoint, EndpointMetrics
from epp.observability.metrics import EppMetrics
from epp.scheduling import configs
from epp.scheduling.config import load_config
from epp.scheduling.scheduler import Scheduler
from epp.scheduling.timing import PluginTimer
from epp.scheduling.types import SchedulingRequest


def test_a_sample_of_cycles_times_every_plugin_by_extension_point():
    metrics = EppMetrics(CollectorRegistry())
    sched = Scheduler(load_config(configs.text("reference-default")), PluginTimer(metrics.plugin_duration, every=4))
    eps = [
        Endpoint(name=f"e{i}", address=f"10.0.0.{i}", port=80, metrics=EndpointMetrics(update_time=1.0))
        for i in range(3)
    ]
    for i in range(12):
        req = SchedulingRequest(request_id=str(i), target_model="m", prefix_input=b"x" * 200)
        result, cycle = sched.schedule(req, eps)
        sched.pre_request(cycle, req, result)
    counts = {
        (s.labels["extension_point"], s.labels["plugin_type"]): s.value
        for fam in metrics.registry.collect()
        if fam.name == "inference_extension_plugin_duration_seconds"
        for s in fam.samples
        if s.name.endswith("_count")
    }
    assert counts == {
        ("PrepareData", "approx-prefix-cache-producer"): 3,
        ("Scorer", "queue-scorer"): 3,
        ("Scorer", "kv-cache-utilization-scorer"): 3,
        ("Scorer", "prefix-cache-scorer"): 3,
        ("Picker", "max-score-picker"): 3,
        ("PreRequest", "approx-prefix-cache-producer"): 3,
    }, counts
