from epp.datalayer.kvevents.sequence import Seq, SeqTracker


def test_sequence_classification():
    t = SeqTracker()
    assert t.classify(0) is Seq.FIRST
    t.advance(0)
    assert t.classify(1) is Seq.NEXT
    t.advance(1)
    assert t.classify(1) is Seq.DUPLICATE
    assert t.classify(5) is Seq.GAP
    assert t.classify(0) is Seq.RESET
    late = SeqTracker()
    assert late.classify(7) is Seq.LATE_JOIN
