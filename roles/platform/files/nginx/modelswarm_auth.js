// API key checks in NGINX (njs; Debian's libnginx-mod-http-js 0.7.9 or the upstream image's njs): the node checks a
// key itself, without asking the console. It is shipped as a swarm config; nginx.conf imports it as
// `modelswarm_auth` and uses it through variables (js_set), evaluated at most once per request:
//
//   $modelswarm_key_digest    SHA-256 hex of the key in `Authorization`, or "" when there is no well-formed key.
//                             A map in the grants file (written by the console) turns it into
//   $modelswarm_key_grant     "<name> <role> <models>" (models: "*" or "m1,m2"), or "" for an unknown key.
//   $modelswarm_key_name      the key's name when the request carries a valid key, else "".
//   $modelswarm_auth_verdict  on a model route: "ok", "401" (no valid identity) or "403" (no rights on the model,
//                             or Promote's path names another user).
//
// Nothing here may throw into NGINX: every entry point catches and answers "no identity" (fail closed), so a hostile
// header gets 401, never a 500. Nothing here logs: the key, its digest and the header never reach a log.

import crypto from 'crypto';

// The contract's rules (modelswarm/contract.py: API_KEY_PATTERN, PRINCIPAL_NAME_PATTERN), anchored; a unit test
// keeps them equal to the contract's.
var KEY = /^msk_[0-9a-f]{12}_[A-Za-z0-9_-]{43}$/;
var NAME = /^[a-z][a-z0-9._-]{1,39}$/;
// "Bearer <key>" or "Basic <base64(name:key)>": the scheme case-insensitive (RFC 7235), one token after it.
var SCHEME = /^(bearer|basic) +([\x21-\x7e]+)$/i;
var BASE64 = /^[A-Za-z0-9+\/]+={0,2}$/;
// Longer than any well-formed header (Basic: 6 + 4/3 of 41 + 1 + 64 characters): longer ones are not even parsed.
var MAX_HEADER = 256;
var CHALLENGE = 'Bearer realm="modelswarm", Basic realm="modelswarm"';

// {key, user} from the Authorization header (user: Basic's user name, or null for Bearer), or null.
function credentials(r) {
    var header = r.headersIn.Authorization;
    if (typeof header !== 'string' || header.length === 0 || header.length > MAX_HEADER) {
        return null;
    }
    var m = SCHEME.exec(header);
    if (m === null) {
        return null;
    }
    if (m[1].length === 6) {  // "bearer", any case
        return KEY.test(m[2]) ? {key: m[2], user: null} : null;
    }
    var encoded = m[2];
    if (encoded.length % 4 !== 0 || !BASE64.test(encoded)) {
        return null;
    }
    var plain = atob(encoded);  // one character per byte: bytes >= 0x80 can match neither rule below
    var colon = plain.indexOf(':');
    if (colon < 0) {
        return null;
    }
    var user = plain.slice(0, colon);
    var key = plain.slice(colon + 1);
    return NAME.test(user) && KEY.test(key) ? {key: key, user: user} : null;
}

// js_set $modelswarm_key_digest
function digest(r) {
    try {
        var c = credentials(r);
        return c === null ? '' : crypto.createHash('sha256').update(c.key).digest('hex');
    } catch (e) {
        return '';
    }
}

// {name, role, models} of the request's key, or null. Basic's user name must be the key's name.
function identity(r) {
    var grant = r.variables.modelswarm_key_grant;
    if (!grant) {
        return null;
    }
    var parts = grant.split(' ');
    if (parts.length !== 3) {
        return null;
    }
    var c = credentials(r);
    if (c === null || (c.user !== null && c.user !== parts[0])) {
        return null;
    }
    return {name: parts[0], role: parts[1], models: parts[2]};
}

function mayUse(id, model) {
    return id.models === '*' || (',' + id.models + ',').indexOf(',' + model + ',') !== -1;
}

// js_set $modelswarm_key_name
function name(r) {
    try {
        var id = identity(r);
        return id === null ? '' : id.name;
    } catch (e) {
        return '';
    }
}

// js_set $modelswarm_auth_verdict: for the locations with $model (and, on Promote's route, $promote_user).
function verdict(r) {
    try {
        var id = identity(r);
        if (id === null) {
            return '401';
        }
        var model = r.variables.model;
        if (!model || !mayUse(id, model)) {
            return '403';
        }
        var user = r.variables.promote_user;
        if (user && user !== id.name) {
            return '403';
        }
        return 'ok';
    } catch (e) {
        return '401';
    }
}

// js_set $modelswarm_admin_verdict: for the locations only an admin key may open (Prometheus).
function adminVerdict(r) {
    try {
        var id = identity(r);
        if (id === null) {
            return '401';
        }
        return id.role === 'admin' ? 'ok' : '403';
    } catch (e) {
        return '401';
    }
}

function answer(r, status, document) {
    r.headersOut['Content-Type'] = 'application/json';
    r.headersOut['Cache-Control'] = 'no-store';
    r.return(status, JSON.stringify(document) + '\n');
}

// js_content of the (rate-limited) location that answers failed checks.
function unauthorized(r) {
    r.headersOut['WWW-Authenticate'] = CHALLENGE;
    answer(r, 401, {error: 'a valid API key is required: "Authorization: Bearer <key>", or HTTP Basic with the '
                           + "key's name as the user and the key as the password"});
}

// js_content of the location that answers a valid key without rights on the model.
function forbidden(r) {
    if (r.variables.modelswarm_admin_only === '1') {
        answer(r, 403, {error: 'only an admin key may open ' + r.variables.modelswarm_admin_what});
        return;
    }
    var user = r.variables.promote_user;
    var model = r.variables.model || '';
    var reason;
    try {
        var id = identity(r);
        reason = id !== null && user && user !== id.name
            ? "the path's user is not this key's name"
            : "this API key has no rights on model '" + model + "'";
    } catch (e) {
        reason = "this API key has no rights on model '" + model + "'";
    }
    answer(r, 403, {error: reason});
}

// js_content of /auth/whoami (the location sends requests without a valid key to `unauthorized` first).
function whoami(r) {
    var id = null;
    try {
        id = identity(r);
    } catch (e) {
        id = null;
    }
    if (id === null) {
        unauthorized(r);
        return;
    }
    answer(r, 200, {name: id.name, role: id.role, models: id.models === '*' ? '*' : id.models.split(','),
                    node: r.variables.hostname});
}

export default {digest, name, verdict, adminVerdict, unauthorized, forbidden, whoami};
