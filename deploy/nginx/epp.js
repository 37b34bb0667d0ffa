// Endpoint Picker client for self-managed NGINX (njs 0.7.9+): asks a picker (epp-bridge or the
// EPP's --http-picker-port) for one endpoint, then proxies the original request to it.
//
// Differences from NGINX Gateway Fabric's epp.js (docs/nginx.md): the original path, query and
// method are forwarded (X-Original-Path / X-Original-Method) so the EPP can tell chat from
// completions; a body NGINX spilled to disk is a failure, not an empty prompt; the EPP's own
// answers (400, 429, ...) reach the client; FailOpen and FailClose are both real.
//
// Variables (nginx.conf): $epp_picker_url, $epp_host, $epp_port, $epp_failure_mode (open|close);
// set here: $epp_endpoint (the pick), $epp_outcome (for the access log).

// Headers of the client -> NGINX hop that must not be copied onto the picker request.
const HOP_BY_HOP = {
    'connection': 1, 'keep-alive': 1, 'proxy-connection': 1, 'transfer-encoding': 1, 'te': 1,
    'upgrade': 1, 'trailer': 1, 'content-length': 1, 'expect': 1,
};
const DESTINATION = 'X-Gateway-Destination-Endpoint';
const BRIDGE_ERROR = 'X-EPP-Bridge-Error';

function pickerHeaders(r) {
    const v = r.variables;
    const out = {};
    for (const name in r.headersIn) {
        if (!HOP_BY_HOP[name.toLowerCase()]) {
            out[name] = r.headersIn[name];
        }
    }
    out['X-EPP-Host'] = v.epp_host;
    out['X-EPP-Port'] = v.epp_port;
    out['X-Original-Path'] = v.request_uri;
    out['X-Original-Method'] = r.method;
    return out;
}

function hasBody(r) {
    const len = r.headersIn['Content-Length'];
    return (len !== undefined && len !== '0') || r.headersIn['Transfer-Encoding'] !== undefined;
}

// No pick: FailOpen proxies to the pool; FailClose answers with a clear 5xx.
function failed(r, status, cause, text) {
    const open = r.variables.epp_failure_mode === 'open';
    r.variables.epp_outcome = (open ? 'failopen:' : 'failclose:') + cause;
    r.error('epp: no endpoint picked (' + cause + '): ' + text);
    if (open) {
        r.internalRedirect('@epp_fail_open');
        return;
    }
    r.headersOut['Content-Type'] = 'text/plain; charset=utf-8';
    r.headersOut[BRIDGE_ERROR] = cause;
    r.return(status, 'no inference endpoint available: ' + text + '\n');
}

async function pick(r) {
    const v = r.variables;
    // requestBuffer: the body's exact bytes, undefined when NGINX wrote it to a temp file.
    const body = r.requestBuffer;
    if (body === undefined && hasBody(r)) {
        failed(r, 500, 'body_not_in_memory',
               'request body was written to disk; raise client_body_buffer_size to client_max_body_size');
        return;
    }
    let reply;
    try {
        reply = await ngx.fetch(v.epp_picker_url, {
            method: 'POST',  // the client's method travels in X-Original-Method
            headers: pickerHeaders(r),
            body: body === undefined ? '' : body,
        });
    } catch (e) {
        failed(r, 502, 'picker_unreachable', String(e));
        return;
    }
    const endpoint = reply.headers.get(DESTINATION);
    if (reply.status === 200 && endpoint) {
        v.epp_endpoint = endpoint;
        v.epp_outcome = 'picked';
        r.internalRedirect('@epp_picked');
        return;
    }
    const text = await reply.text();
    const cause = reply.headers.get(BRIDGE_ERROR);
    if (cause || reply.status === 200 || reply.status >= 500) {
        // The picker could not decide (EPP down, timeout, no endpoint, EPP internal error).
        failed(r, reply.status === 200 ? 503 : reply.status, cause || 'status_' + reply.status, text);
        return;
    }
    // The EPP's decision about this request (bad body, shed, unknown model): pass it on.
    v.epp_outcome = 'epp:' + reply.status;
    r.headersOut['Content-Type'] = reply.headers.get('Content-Type') || 'text/plain; charset=utf-8';
    r.return(reply.status, text);
}

export default {pick};
