// Tollgate example plugin in C: require a minimum client certificate chain length.
//
// Phases: access. Config: {"min_chain_length": N} with 1 <= N <= 1000.
//
// In access the plugin reads the client's certificate chain (PEM) and counts the certificates.
// With no chain, or fewer than N certificates, it records `FAILED:chain too short` as the
// request's client_verify and answers 403 with a JSON body; otherwise it records `SUCCESS` and
// sets the upstream request header `x-client-chain-length: <count>`.
//
// Memory ownership (canonical ABI, wit-bindgen C):
//  * export arguments (`config`, `chunk`) are owned by this module and freed here;
//  * values an export returns (error strings, the phase list) must come from malloc: the
//    generated cabi_post_* functions free them after the host has copied them;
//  * strings an import returns (the chain, error payloads) are owned by this module and freed
//    here; arguments passed to imports stay ours (the host copies them), so they may be static.

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plugin.h"

#define MIN_CHAIN_MAX 1000
#define PEM_BEGIN "-----BEGIN CERTIFICATE-----"

static const char HEADER_NAME[] = "x-client-chain-length";

// Set by configure, which the host calls on every fresh instance before any phase.
static unsigned min_chain_length = 0;

// ---------------------------------------------------------------------------------------------
// helpers

// Stores a malloc'd, formatted message in *out (freed by the generated post-return code).
static bool fail(plugin_string_t *out, const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0) {
        n = 0;
    }
    if ((size_t)n >= sizeof buf) {
        n = sizeof buf - 1;
    }
    if (n == 0) {  // post-return frees only a non-empty string; never return an empty one
        buf[0] = '?';
        n = 1;
    }
    plugin_string_dup_n(out, buf, (size_t)n);
    return false;
}

// Describes a host error for a message; the result points into `e` or at a literal.
static void describe(const tollgate_plugin_types_error_t *e, const char **kind, int *len,
                     const char **text) {
    switch (e->tag) {
    case TOLLGATE_PLUGIN_TYPES_ERROR_WRONG_PHASE:
        *kind = "wrong-phase: ";
        *text = (const char *)e->val.wrong_phase.ptr;
        *len = (int)e->val.wrong_phase.len;
        break;
    case TOLLGATE_PLUGIN_TYPES_ERROR_INVALID_ARGUMENT:
        *kind = "invalid-argument: ";
        *text = (const char *)e->val.invalid_argument.ptr;
        *len = (int)e->val.invalid_argument.len;
        break;
    case TOLLGATE_PLUGIN_TYPES_ERROR_NOT_TLS:
        *kind = "not-tls";
        *text = "";
        *len = 0;
        break;
    default:
        *kind = "unknown error";
        *text = "";
        *len = 0;
        break;
    }
}

// Turns a host error into this handler's error result and frees the host error.
static bool fail_host(plugin_string_t *out, const char *what, tollgate_plugin_types_error_t *e) {
    const char *kind, *text;
    int len;
    describe(e, &kind, &len, &text);
    fail(out, "%s failed: %s%.*s", what, kind, len, text);
    tollgate_plugin_types_error_free(e);
    return false;
}

// Best-effort log line.
static void log_msg(tollgate_plugin_log_log_level_t level, const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0) {
        return;
    }
    if ((size_t)n >= sizeof buf) {
        n = sizeof buf - 1;
    }
    plugin_string_t msg = {(uint8_t *)buf, (size_t)n};
    tollgate_plugin_log_error_t err;
    if (!tollgate_plugin_log_log(level, &msg, &err)) {
        tollgate_plugin_log_error_free(&err);
    }
}

static size_t count_occurrences(const uint8_t *hay, size_t len, const char *needle) {
    size_t n = strlen(needle), count = 0;
    if (n == 0 || len < n) {
        return 0;
    }
    for (size_t i = 0; i + n <= len;) {
        const uint8_t *p = memchr(hay + i, needle[0], len - n + 1 - i);
        if (p == NULL) {
            break;
        }
        i = (size_t)(p - hay);
        if (memcmp(p, needle, n) == 0) {
            count++;
            i += n;
        } else {
            i++;
        }
    }
    return count;
}

// ---------------------------------------------------------------------------------------------
// configuration: a minimal hand-written parser for {"min_chain_length": <integer>}

typedef struct {
    const char *p, *end;
} cursor_t;

static void skip_ws(cursor_t *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r')) {
        c->p++;
    }
}

// Parses a JSON string at the cursor; sets [*s, *s+*n) to its raw contents (escapes kept).
static bool parse_string(cursor_t *c, const char **s, size_t *n) {
    if (c->p >= c->end || *c->p != '"') {
        return false;
    }
    const char *start = ++c->p;
    while (c->p < c->end && *c->p != '"') {
        if ((unsigned char)*c->p < 0x20) {
            return false;
        }
        if (*c->p == '\\') {
            c->p++;
            if (c->p >= c->end) {
                return false;
            }
        }
        c->p++;
    }
    if (c->p >= c->end) {
        return false;
    }
    *s = start;
    *n = (size_t)(c->p - start);
    c->p++;
    return true;
}

static bool parse_config(const char *json, size_t len, unsigned *out, plugin_string_t *err) {
    cursor_t c = {json, json + len};
    bool have = false;
    unsigned value = 0;

    skip_ws(&c);
    if (c.p >= c.end || *c.p != '{') {
        return fail(err, "invalid config: expected a JSON object like {\"min_chain_length\": 2}");
    }
    c.p++;
    skip_ws(&c);
    if (c.p < c.end && *c.p == '}') {
        c.p++;
    } else {
        for (;;) {
            const char *key;
            size_t klen;
            skip_ws(&c);
            if (!parse_string(&c, &key, &klen)) {
                return fail(err, "invalid config: expected a field name at offset %d",
                            (int)(c.p - json));
            }
            skip_ws(&c);
            if (c.p >= c.end || *c.p != ':') {
                return fail(err, "invalid config: expected ':' after \"%.*s\"", (int)klen, key);
            }
            c.p++;
            skip_ws(&c);
            if (klen != strlen("min_chain_length") ||
                memcmp(key, "min_chain_length", klen) != 0) {
                return fail(err, "invalid config: unknown field \"%.*s\" (only min_chain_length)",
                            (int)(klen > 64 ? 64 : klen), key);
            }
            if (have) {
                return fail(err, "invalid config: min_chain_length given more than once");
            }
            if (c.p >= c.end || *c.p < '0' || *c.p > '9') {
                return fail(err, "invalid config: min_chain_length must be an integer from 1 to %d",
                            MIN_CHAIN_MAX);
            }
            unsigned long v = 0;
            while (c.p < c.end && *c.p >= '0' && *c.p <= '9') {
                v = v * 10 + (unsigned long)(*c.p - '0');
                if (v > MIN_CHAIN_MAX) {
                    return fail(err, "invalid config: min_chain_length must be at most %d",
                                MIN_CHAIN_MAX);
                }
                c.p++;
            }
            if (c.p < c.end && (*c.p == '.' || *c.p == 'e' || *c.p == 'E')) {
                return fail(err, "invalid config: min_chain_length must be an integer");
            }
            if (v < 1) {
                return fail(err, "invalid config: min_chain_length must be at least 1");
            }
            value = (unsigned)v;
            have = true;
            skip_ws(&c);
            if (c.p < c.end && *c.p == ',') {
                c.p++;
                continue;
            }
            if (c.p < c.end && *c.p == '}') {
                c.p++;
                break;
            }
            return fail(err, "invalid config: expected ',' or '}' at offset %d", (int)(c.p - json));
        }
    }
    skip_ws(&c);
    if (c.p != c.end) {
        return fail(err, "invalid config: unexpected text after the JSON object");
    }
    if (!have) {
        return fail(err, "invalid config: min_chain_length is required, e.g. {\"min_chain_length\": 2}");
    }
    *out = value;
    return true;
}

// ---------------------------------------------------------------------------------------------
// exports

bool exports_tollgate_plugin_handler_configure(plugin_string_t *config, plugin_string_t *err) {
    unsigned v = 0;
    bool ok = parse_config((const char *)config->ptr, config->len, &v, err);
    plugin_string_free(config);
    if (ok) {
        min_chain_length = v;
    }
    return ok;
}

void exports_tollgate_plugin_handler_phases(exports_tollgate_plugin_handler_list_phase_t *ret) {
    ret->ptr = malloc(sizeof *ret->ptr);  // freed by the generated post-return
    if (ret->ptr == NULL) {
        ret->len = 0;
        return;
    }
    ret->ptr[0] = TOLLGATE_PLUGIN_TYPES_PHASE_ACCESS;
    ret->len = 1;
}

static bool reject(size_t count, plugin_string_t *err) {
    static const char body[] = "{\"message\":\"client certificate chain too short\"}";
    plugin_string_t verify;
    plugin_string_set(&verify, "FAILED:chain too short");
    tollgate_plugin_client_tls_error_t e;
    if (!tollgate_plugin_client_tls_set_client_verify(&verify, &e)) {
        const char *kind, *text;
        int len;
        describe(&e, &kind, &len, &text);
        log_msg(TOLLGATE_PLUGIN_TYPES_LOG_LEVEL_WARN, "set-client-verify failed: %s%.*s", kind,
                len, text);
        tollgate_plugin_types_error_free(&e);
    }

    tollgate_plugin_response_header_entry_t hdr;
    plugin_string_set(&hdr.f0, "content-type");
    plugin_string_set(&hdr.f1, "application/json");
    tollgate_plugin_response_list_header_entry_t headers = {&hdr, 1};
    plugin_list_u8_t b = {(uint8_t *)body, sizeof body - 1};
    log_msg(TOLLGATE_PLUGIN_TYPES_LOG_LEVEL_INFO,
            "client certificate chain has %u certificate(s), %u required: 403",
            (unsigned)count, min_chain_length);
    if (!tollgate_plugin_response_exit(403, &headers, &b, &e)) {
        return fail_host(err, "response.exit", &e);
    }
    return true;
}

bool exports_tollgate_plugin_handler_on_access(plugin_string_t *err) {
    if (min_chain_length == 0) {
        return fail(err, "plugin is not configured");
    }
    plugin_option_string_t chain;
    tollgate_plugin_client_tls_error_t e;
    size_t count = 0;
    if (!tollgate_plugin_client_tls_get_full_client_certificate_chain(&chain, &e)) {
        if (e.tag != TOLLGATE_PLUGIN_TYPES_ERROR_NOT_TLS) {
            return fail_host(err, "client-tls.get-full-client-certificate-chain", &e);
        }
        tollgate_plugin_types_error_free(&e);  // plaintext connection: no chain
        return reject(0, err);
    }
    if (!chain.is_some) {
        return reject(0, err);
    }
    count = count_occurrences(chain.val.ptr, chain.val.len, PEM_BEGIN);
    plugin_option_string_free(&chain);
    if (count < min_chain_length) {
        return reject(count, err);
    }

    plugin_string_t verify;
    plugin_string_set(&verify, "SUCCESS");
    if (!tollgate_plugin_client_tls_set_client_verify(&verify, &e)) {
        return fail_host(err, "client-tls.set-client-verify", &e);
    }

    char num[24];
    int n = snprintf(num, sizeof num, "%zu", count);
    plugin_string_t name, value = {(uint8_t *)num, (size_t)n};
    plugin_string_set(&name, HEADER_NAME);
    tollgate_plugin_request_error_t re;
    if (!tollgate_plugin_request_set_header(&name, &value, &re)) {
        return fail_host(err, "request.set-header", &re);
    }
    return true;
}

bool exports_tollgate_plugin_handler_on_certificate(plugin_string_t *err) {
    (void)err;
    return true;
}

bool exports_tollgate_plugin_handler_on_rewrite(plugin_string_t *err) {
    (void)err;
    return true;
}

bool exports_tollgate_plugin_handler_on_balancer(plugin_string_t *err) {
    (void)err;
    return true;
}

bool exports_tollgate_plugin_handler_on_header_filter(plugin_string_t *err) {
    (void)err;
    return true;
}

bool exports_tollgate_plugin_handler_on_body_filter(plugin_list_u8_t *chunk, bool end_of_stream,
                                                     plugin_string_t *err) {
    (void)end_of_stream;
    (void)err;
    plugin_list_u8_free(chunk);
    return true;
}

bool exports_tollgate_plugin_handler_on_log(plugin_string_t *err) {
    (void)err;
    return true;
}
