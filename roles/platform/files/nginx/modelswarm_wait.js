// Requests for a model that has no reachable replica wait here instead of failing at once (njs; Debian's
// libnginx-mod-http-js 0.7.9 or the upstream image's njs). Shipped as a swarm config; nginx.conf imports it as
// `modelswarm_wait` and sends a model route's 502 (no replica could be reached: the model's service has no running
// task, or none of them answered) to the named location @model_wait, which runs `wait`:
//
//   1. It asks the Docker API proxy (read-only, on this node's docker-api network) for the model's service. No such
//      service: 404 at once. The service's label named by $modelswarm_queue_timeout_label (the contract's
//      io.modelswarm.queue-timeout) gives how long to wait, in seconds (0: not at all); without it, or when the proxy
//      cannot say, $modelswarm_queue_timeout (the contract's default).
//   2. Every $modelswarm_wait_interval milliseconds it sends the request again through the internal location
//      /_modelswarm/retry/<model><path>, which resolves the model's replicas afresh. The first answer that is not
//      502 (no replica yet) is passed on: status, body, Content-Type and X-Request-Id.
//   3. Past the timeout: 503 JSON with Retry-After.
//
// How many requests may wait on a node at once is limit_conn's job in @model_wait (more get 503 at once).
// Predictions are idempotent by contract (docs/models.md), so sending one again is safe. Nothing here logs a
// header or a body, and nothing may throw into NGINX: every failure ends in a JSON answer.

var RETRY = '/_modelswarm/retry/';

function sleep(ms) {
    return new Promise(function (resolve) {
        setTimeout(resolve, ms);
    });
}

function json(r, status, document, headers) {
    r.headersOut['Content-Type'] = 'application/json';
    for (var name in headers || {}) {
        r.headersOut[name] = headers[name];
    }
    r.return(status, JSON.stringify(document) + '\n');
}

// A whole number of seconds from a label or a variable, or `fallback` when it is not one.
function seconds(text, fallback) {
    return /^[0-9]{1,4}$/.test(String(text)) ? Number(text) : fallback;
}

// The model service's labels: an object; null when the swarm has no such service; undefined when the proxy could
// not say (not reachable, quorum lost, an answer that is not JSON).
async function serviceLabels(r) {
    try {
        var reply = await ngx.fetch('http://' + r.variables.modelswarm_docker_api + '/services/' +
                                    r.variables.modelswarm_model_service);
        if (reply.status === 404) {
            return null;
        }
        if (reply.status !== 200) {
            return undefined;
        }
        var service = await reply.json();
        return (service && service.Spec && service.Spec.Labels) || {};
    } catch (e) {
        return undefined;
    }
}

function passOn(r, reply) {
    var body = reply.responseBody !== undefined ? reply.responseBody : reply.responseText;
    var type = reply.headersOut['Content-Type'];
    var id = reply.headersOut['X-Request-Id'];
    if (type) {
        r.headersOut['Content-Type'] = type;
    }
    if (id) {
        r.headersOut['X-Request-Id'] = id;
    }
    r.return(reply.status, body === undefined ? '' : body);
}

async function wait(r) {
    var model = r.variables.model;
    try {
        var labels = await serviceLabels(r);
        if (labels === null) {
            json(r, 404, {error: "no model '" + model + "' is deployed"});
            return;
        }
        var fallback = seconds(r.variables.modelswarm_queue_timeout, 30);
        var label = r.variables.modelswarm_queue_timeout_label;
        var limit = seconds(labels === undefined ? fallback : labels[label], fallback);
        var interval = seconds(r.variables.modelswarm_wait_interval, 250);
        var deadline = Date.now() + limit * 1000;
        var uri = RETRY + model + r.variables.modelswarm_model_path;
        var options = {method: r.method, args: r.variables.args || ''};
        if (r.requestText !== undefined && r.requestText !== null) {
            options.body = r.requestText;
        }
        while (Date.now() + interval <= deadline) {
            await sleep(interval);
            var reply = await r.subrequest(uri, options);
            if (reply.status !== 502) {
                passOn(r, reply);
                return;
            }
        }
        json(r, 503, {error: "model '" + model + "' has no healthy replica; waited " + limit + " s"},
             {'Retry-After': '5'});
    } catch (e) {
        json(r, 503, {error: "model '" + model + "' has no healthy replica"}, {'Retry-After': '5'});
    }
}

export default {wait};
