// This node's NGINX in Prometheus' text format (njs; Debian's libnginx-mod-http-js 0.7.9 or the upstream image's
// njs). Shipped as a swarm config; nginx.conf imports it as `modelswarm_metrics` and serves `metrics` on the status
// listener, which no port publishes: Prometheus reaches it on the platform network only.
//
// The connection and request counts come from NGINX's own stub_status (an internal location, read by subrequest),
// under the names prometheus-nginx-exporter gives them, so dashboards made for it work. Added: the expiry of the
// certificate this NGINX serves (the platform role writes its notAfter into the configuration when it deploys it),
// for the CertificateExpiresSoon alert.

function line(name, value, help, type) {
    return '# HELP ' + name + ' ' + help + '\n# TYPE ' + name + ' ' + type + '\n' + name + ' ' + value + '\n';
}

// stub_status' text:
//   Active connections: 2
//   server accepts handled requests
//    10 10 37
//   Reading: 0 Writing: 1 Waiting: 1
function parse(text) {
    var numbers = (text.match(/\d+/g) || []).map(Number);
    if (numbers.length !== 7) {
        throw new Error('unexpected stub_status text');
    }
    return {
        active: numbers[0], accepted: numbers[1], handled: numbers[2], requests: numbers[3],
        reading: numbers[4], writing: numbers[5], waiting: numbers[6],
    };
}

async function metrics(r) {
    var out = '';
    var up = 0;
    try {
        var reply = await r.subrequest('/_modelswarm/stub_status');
        var s = parse(reply.responseText);
        up = 1;
        out += line('nginx_connections_active', s.active, 'Active client connections.', 'gauge');
        out += line('nginx_connections_accepted', s.accepted, 'Accepted client connections.', 'counter');
        out += line('nginx_connections_handled', s.handled, 'Handled client connections.', 'counter');
        out += line('nginx_http_requests_total', s.requests, 'Total HTTP requests.', 'counter');
        out += line('nginx_connections_reading', s.reading, 'Connections where NGINX reads the request header.',
                    'gauge');
        out += line('nginx_connections_writing', s.writing, 'Connections where NGINX writes the response.', 'gauge');
        out += line('nginx_connections_waiting', s.waiting, 'Idle client connections.', 'gauge');
    } catch (e) {
        r.error('modelswarm_metrics: stub_status: ' + e.message);
    }
    out = line('nginx_up', up, 'Whether NGINX answered its status (1) or not (0).', 'gauge') + out;
    var notAfter = Number(r.variables.modelswarm_certificate_not_after);
    if (notAfter > 0) {
        out += line('modelswarm_tls_certificate_not_after_seconds', notAfter,
                    'When the certificate this NGINX serves expires (Unix time).', 'gauge');
    }
    r.headersOut['Content-Type'] = 'text/plain; version=0.0.4; charset=utf-8';
    r.return(200, out);
}

export default {metrics, parse};
