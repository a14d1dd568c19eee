// The model replicas this node's NGINX sends predictions to, checked actively (njs; Debian's libnginx-mod-http-js
// 0.7.9 or the upstream image's njs). Shipped as a swarm config; nginx.conf imports it as `modelswarm_replicas` and
// serves `upstreams` on a loopback-only listener. The entrypoint asks it every second and, when the answer changes,
// installs it as the replica router's include file of upstream groups and reloads the router (nginx-router.conf).
//
// One answer:
//   1. From the Docker API proxy (read-only, docker-api network): the model services (label io.modelswarm.model)
//      and their running tasks' addresses on the models network.
//   2. Each address's GET /health, with this location's js_fetch_timeout: a replica that does not answer 200 in
//      time (frozen, overloaded, stopping) is left out, so no new request goes to it. A replica that answers is
//      listed; NGINX still takes one out by itself for fail_timeout after a failed request (max_fails=1), and
//      least_conn sends new requests to the replica with the fewest in flight, so one that hangs collects few.
//   3. The text: one `upstream modelswarm_model_<name>` per model with at least one healthy replica, and the map
//      from $model to its group. A model without a healthy replica is not in the map: its requests resolve its
//      name through Docker's DNS as before, and wait for a replica when none answers (modelswarm_wait.js). Then,
//      after the line "# modelswarm model routes", the router's locations of the models whose service has a
//      timeout of its own (label io.modelswarm.timeout, from the manifest's timeout).
// When the Docker API does not answer (quorum lost, proxy restarting), the answer is 503 and the entrypoint keeps
// the file it has.

function toQuery(filters) {
    return encodeURIComponent(JSON.stringify(filters));
}

async function getJson(url) {
    var reply = await ngx.fetch(url);
    if (reply.status !== 200) {
        throw new Error('HTTP ' + reply.status);
    }
    return await reply.json();
}

// Whether the replica at `address` answers GET /health with 200 within js_fetch_timeout.
async function healthy(address, port) {
    try {
        var reply = await ngx.fetch('http://' + address + ':' + port + '/health');
        return reply.status === 200;
    } catch (e) {
        return false;
    }
}

// {model name: [addresses]} of the running tasks of every model service, on the models network.
async function replicas(r) {
    var api = 'http://' + r.variables.modelswarm_docker_api;
    var label = r.variables.modelswarm_model_label;
    var network = r.variables.modelswarm_models_network;
    var valid = new RegExp('^(' + r.variables.modelswarm_model_name_pattern + ')$');  // the contract's rule
    var maxTimeout = Number(r.variables.modelswarm_max_timeout);
    var timeoutLabel = r.variables.modelswarm_timeout_label;
    var services = await getJson(api + '/services?filters=' + toQuery({label: [label]}));
    var models = {};
    var byService = {};
    var timeouts = {};
    for (var i = 0; i < services.length; i++) {
        var labels = (services[i].Spec || {}).Labels || {};
        var name = labels[label];
        if (valid.test(name || '')) {
            byService[services[i].ID] = name;
            models[name] = [];
            // The model's own timeout (whole seconds, the contract's range); anything else: the platform's.
            var seconds = Number(labels[timeoutLabel]);
            if (/^[0-9]{1,2}$/.test(labels[timeoutLabel] || '') && seconds >= 1 && seconds <= maxTimeout) {
                timeouts[name] = seconds;
            }
        }
    }
    var tasks = await getJson(api + '/tasks?filters=' + toQuery({'desired-state': ['running']}));
    for (var j = 0; j < tasks.length; j++) {
        var task = tasks[j];
        var model = byService[task.ServiceID];
        if (model === undefined || (task.Status || {}).State !== 'running') {
            continue;
        }
        var attachments = task.NetworksAttachments || [];
        for (var k = 0; k < attachments.length; k++) {
            if (((attachments[k].Network || {}).Spec || {}).Name !== network) {
                continue;
            }
            var addresses = attachments[k].Addresses || [];
            for (var m = 0; m < addresses.length; m++) {
                var address = addresses[m].split('/')[0];
                if (/^[0-9]{1,3}(\.[0-9]{1,3}){3}$/.test(address)) {
                    models[model].push(address);
                }
            }
        }
    }
    return {models: models, timeouts: timeouts};
}

// The replica router's own locations for the models whose manifest sets a timeout (the router's generic location
// has the platform's): the model route and the waiting request's retry, each including the router's route file.
function renderRoutes(timeouts, include, errorLog) {
    var names = Object.keys(timeouts).sort();
    var lines = ['# modelswarm model routes: the models with a timeout of their own'];
    for (var i = 0; i < names.length; i++) {
        var seconds = timeouts[names[i]];
        var prefixes = ['', '/_retry'];
        for (var j = 0; j < prefixes.length; j++) {
            lines.push('location ~ "^' + prefixes[j] + '/(?<model>' + names[i] + ')(?<rest>/.*)$" {');
            if (prefixes[j]) {
                lines.push('    error_log ' + errorLog + ' crit;');
            }
            lines.push('    proxy_read_timeout ' + seconds + 's;');
            lines.push('    proxy_send_timeout ' + seconds + 's;');
            lines.push('    include ' + include + ';');
            lines.push('}');
        }
    }
    return lines.join('\n') + '\n';
}

function render(checked, port, failTimeout) {
    var names = Object.keys(checked).sort();
    var lines = ['# modelswarm model replicas: generated on this node by modelswarm_replicas.js, checked by /health'];
    var mapped = [];
    for (var i = 0; i < names.length; i++) {
        var up = checked[names[i]].filter(function (c) { return c.healthy; }).map(function (c) { return c.address; });
        if (up.length === 0) {
            continue;
        }
        up.sort();
        lines.push('upstream modelswarm_model_' + names[i] + ' {');
        lines.push('    zone modelswarm_model_' + names[i] + ' 64k;');
        lines.push('    least_conn;');
        for (var j = 0; j < up.length; j++) {
            lines.push('    server ' + up[j] + ':' + port + ' max_fails=1 fail_timeout=' + failTimeout + ';');
        }
        lines.push('}');
        mapped.push('    ' + names[i] + ' modelswarm_model_' + names[i] + ';');
    }
    lines.push('map $model $modelswarm_model_upstream {');
    lines.push('    default "";');
    lines = lines.concat(mapped);
    lines.push('}');
    return lines.join('\n') + '\n';
}

async function upstreams(r) {
    var port = r.variables.modelswarm_model_port;
    var models;
    var timeouts;
    try {
        var found = await replicas(r);
        models = found.models;
        timeouts = found.timeouts;
    } catch (e) {
        r.return(503, 'the Docker API did not answer: ' + String(e.message || e).slice(0, 200) + '\n');
        return;
    }
    var names = Object.keys(models);
    var checks = [];
    for (var i = 0; i < names.length; i++) {
        for (var j = 0; j < models[names[i]].length; j++) {
            checks.push({model: names[i], address: models[names[i]][j]});
        }
    }
    var results = await Promise.all(checks.map(function (c) { return healthy(c.address, port); }));
    var checked = {};
    for (var k = 0; k < names.length; k++) {
        checked[names[k]] = [];
    }
    for (var m = 0; m < checks.length; m++) {
        checked[checks[m].model].push({address: checks[m].address, healthy: results[m]});
    }
    r.headersOut['Content-Type'] = 'text/plain';
    r.return(200, render(checked, port, r.variables.modelswarm_replica_fail_timeout)
        + renderRoutes(timeouts, r.variables.modelswarm_router_route, r.variables.modelswarm_router_error_log));
}

export default {upstreams};
