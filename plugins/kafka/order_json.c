/* The JSON order parser of the Kafka ingress (order_json.h). */
#include "order_json.h"

#include <stdio.h>
#include <string.h>

typedef struct {
    const char *p, *end;
    char *why;
    size_t why_size;
} cursor;

static int refuse(cursor *c, const char *what) {
    if (c->why && c->why_size) snprintf(c->why, c->why_size, "%s", what);
    return -1;
}

static void skip_space(cursor *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r')) c->p++;
}

static int hex4(const char *p, unsigned *out) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char h = p[i];
        v <<= 4;
        if (h >= '0' && h <= '9') v |= (unsigned)(h - '0');
        else if (h >= 'a' && h <= 'f') v |= (unsigned)(h - 'a' + 10);
        else if (h >= 'A' && h <= 'F') v |= (unsigned)(h - 'A' + 10);
        else return -1;
    }
    *out = v;
    return 0;
}

/* A JSON string into out (UTF-8, NUL-terminated, at most size - 1 bytes). */
static int string(cursor *c, char *out, size_t size, const char *what) {
    if (c->p >= c->end || *c->p != '"') return refuse(c, what);
    c->p++;
    size_t n = 0;
    while (c->p < c->end && *c->p != '"') {
        unsigned char ch = (unsigned char)*c->p++;
        unsigned code = ch;
        if (ch < 0x20) return refuse(c, "a control character inside a string");
        if (ch == '\\') {
            if (c->p >= c->end) return refuse(c, "the message ends inside a string");
            char e = *c->p++;
            switch (e) {
            case '"': code = '"'; break;
            case '\\': code = '\\'; break;
            case '/': code = '/'; break;
            case 'b': code = '\b'; break;
            case 'f': code = '\f'; break;
            case 'n': code = '\n'; break;
            case 'r': code = '\r'; break;
            case 't': code = '\t'; break;
            case 'u':
                if (c->end - c->p < 4 || hex4(c->p, &code) != 0) return refuse(c, "a bad \\u escape");
                c->p += 4;
                if (code == 0) return refuse(c, "\\u0000 inside a string");
                if (code >= 0xD800 && code <= 0xDFFF) return refuse(c, "a surrogate \\u escape (not in the schema's names)");
                break;
            default: return refuse(c, "a bad escape inside a string");
            }
            /* code point to UTF-8 */
            char buf[3];
            size_t k = 0;
            if (code < 0x80) buf[k++] = (char)code;
            else if (code < 0x800) { buf[k++] = (char)(0xC0 | code >> 6); buf[k++] = (char)(0x80 | (code & 0x3F)); }
            else { buf[k++] = (char)(0xE0 | code >> 12); buf[k++] = (char)(0x80 | ((code >> 6) & 0x3F)); buf[k++] = (char)(0x80 | (code & 0x3F)); }
            if (n + k >= size) return refuse(c, "a string longer than the schema allows");
            memcpy(out + n, buf, k);
            n += k;
            continue;
        }
        if (n + 1 >= size) return refuse(c, "a string longer than the schema allows");
        out[n++] = (char)ch;
    }
    if (c->p >= c->end) return refuse(c, "the message ends inside a string");
    c->p++;
    out[n] = 0;
    return 0;
}

/* A JSON integer (no fraction, no exponent) into *out. */
static int integer(cursor *c, int64_t *out, const char *name) {
    char why[96];
    int negative = 0;
    if (c->p < c->end && *c->p == '-') { negative = 1; c->p++; }
    if (c->p >= c->end || *c->p < '0' || *c->p > '9') {
        snprintf(why, sizeof why, "%s must be an integer", name);
        return refuse(c, why);
    }
    if (*c->p == '0' && c->p + 1 < c->end && c->p[1] >= '0' && c->p[1] <= '9') return refuse(c, "a number with a leading zero");
    uint64_t v = 0;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
        unsigned d = (unsigned)(*c->p++ - '0');
        if (v > (UINT64_C(9223372036854775808) - d) / 10) {
            snprintf(why, sizeof why, "%s is out of the 64-bit range", name);
            return refuse(c, why);
        }
        v = v * 10 + d;
    }
    if (c->p < c->end && (*c->p == '.' || *c->p == 'e' || *c->p == 'E')) {
        snprintf(why, sizeof why, "%s must be an integer (ticks and lots, not decimals)", name);
        return refuse(c, why);
    }
    if (!negative && v > (uint64_t)INT64_MAX) {
        snprintf(why, sizeof why, "%s is out of the 64-bit range", name);
        return refuse(c, why);
    }
    *out = negative ? (int64_t)(0 - v) : (int64_t)v;
    return 0;
}

static int pick(const char *text, const char *const *names, int count, int *out) {
    for (int i = 0; i < count; i++)
        if (strcmp(text, names[i]) == 0) { *out = i; return 0; }
    return -1;
}

enum { F_TYPE, F_SYMBOL, F_ORDER_ID, F_ACCOUNT, F_SIDE, F_ORDER_TYPE, F_PRICE, F_QUANTITY, F_TIF, F_STP, F_CLIENT_TIME, F_COUNT };
static const char *const field_names[F_COUNT] = {"type", "symbol", "order_id", "account", "side", "order_type",
                                                 "price", "quantity", "time_in_force", "self_trade", "client_time"};
static const char *const type_names[] = {"new", "cancel", "replace"};
static const char *const side_names[] = {"buy", "sell"};
static const char *const order_type_names[] = {"limit", "market"};
static const char *const tif_names[] = {"gtc", "ioc", "fok", "post_only"};
static const char *const stp_names[] = {"none", "cancel_newest", "cancel_oldest", "cancel_both", "decrement"};

int cb_order_from_json(const char *text, size_t length, cb_json_order *out, char *why, size_t why_size) {
    cursor c = {text, text + length, why, why_size};
    char message[160];
    if (text == NULL) return refuse(&c, "no message");
    if (length > CB_JSON_MAX_MESSAGE) {
        snprintf(message, sizeof message, "a message of %zu bytes, larger than the %d a JSON order may be", length,
                 CB_JSON_MAX_MESSAGE);
        return refuse(&c, message);
    }
    memset(out, 0, sizeof *out);
    int seen[F_COUNT] = {0};
    int64_t number[F_COUNT] = {0};
    int choice[F_COUNT] = {0};
    skip_space(&c);
    if (c.p >= c.end || *c.p != '{') return refuse(&c, "not a JSON object");
    c.p++;
    skip_space(&c);
    if (c.p < c.end && *c.p == '}') {
        c.p++;
    } else {
        for (;;) {
            char key[32];
            skip_space(&c);
            if (string(&c, key, sizeof key, "a key must be a string") != 0) {
                if (why && strcmp(why, "a string longer than the schema allows") == 0) return refuse(&c, "an unknown field");
                return -1;
            }
            int f;
            if (pick(key, field_names, F_COUNT, &f) != 0) {
                snprintf(message, sizeof message, "unknown field \"%s\"", key);
                return refuse(&c, message);
            }
            if (seen[f]) {
                snprintf(message, sizeof message, "field \"%s\" given twice", key);
                return refuse(&c, message);
            }
            seen[f] = 1;
            skip_space(&c);
            if (c.p >= c.end || *c.p != ':') return refuse(&c, "a key without ':'");
            c.p++;
            skip_space(&c);
            if (c.p < c.end && (*c.p == '{' || *c.p == '[')) {
                snprintf(message, sizeof message, "field \"%s\": nested values are not part of the schema", key);
                return refuse(&c, message);
            }
            switch (f) {
            case F_SYMBOL:
                if (string(&c, out->symbol, sizeof out->symbol, "symbol must be a string") != 0) return -1;
                break;
            case F_TYPE: case F_SIDE: case F_ORDER_TYPE: case F_TIF: case F_STP: {
                char value[24];
                snprintf(message, sizeof message, "%s must be a string", key);
                if (string(&c, value, sizeof value, message) != 0) return -1;
                const char *const *names = f == F_TYPE ? type_names : f == F_SIDE ? side_names
                                         : f == F_ORDER_TYPE ? order_type_names : f == F_TIF ? tif_names : stp_names;
                int count = f == F_TYPE ? 3 : f == F_SIDE ? 2 : f == F_ORDER_TYPE ? 2 : f == F_TIF ? 4 : 5;
                if (pick(value, names, count, &choice[f]) != 0) {
                    snprintf(message, sizeof message, "%s \"%s\" is not one of its values", key, value);
                    return refuse(&c, message);
                }
                break;
            }
            default:
                if (integer(&c, &number[f], field_names[f]) != 0) return -1;
            }
            skip_space(&c);
            if (c.p < c.end && *c.p == ',') { c.p++; continue; }
            if (c.p < c.end && *c.p == '}') { c.p++; break; }
            return refuse(&c, "expected ',' or '}'");
        }
    }
    skip_space(&c);
    if (c.p != c.end) return refuse(&c, "bytes after the object");

    int type = seen[F_TYPE] ? choice[F_TYPE] : 0;
    if (!seen[F_SYMBOL] || out->symbol[0] == 0) return refuse(&c, "no symbol");
    if (!seen[F_ORDER_ID]) return refuse(&c, "no order_id");
    if (number[F_ORDER_ID] < 0 || number[F_ORDER_ID] > ((INT64_C(1) << 48) - 1)) return refuse(&c, "order_id outside 0 .. 2^48-1");
    if (seen[F_CLIENT_TIME] && number[F_CLIENT_TIME] < 0) return refuse(&c, "client_time is negative");
    /* The fields each type may carry. */
    static const int allowed[3][F_COUNT] = {
        /* new */ {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1},
        /* cancel */ {1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1},
        /* replace */ {1, 1, 1, 0, 0, 0, 1, 1, 0, 0, 1},
    };
    for (int f = 0; f < F_COUNT; f++)
        if (seen[f] && !allowed[type][f]) {
            snprintf(message, sizeof message, "field \"%s\" is not part of a %s", field_names[f], type_names[type]);
            return refuse(&c, message);
        }
    cb_command *cmd = &out->command;
    cmd->version = CB_RECORD_VERSION;
    cmd->order_id = (uint64_t)number[F_ORDER_ID];
    cmd->client_time = (uint64_t)number[F_CLIENT_TIME];
    switch (type) {
    case 0: {
        if (!seen[F_SIDE]) return refuse(&c, "a new order without side");
        if (!seen[F_QUANTITY]) return refuse(&c, "a new order without quantity");
        int market = seen[F_ORDER_TYPE] && choice[F_ORDER_TYPE] == 1;
        if (!market && !seen[F_PRICE]) return refuse(&c, "a limit order without price");
        if (market && seen[F_PRICE]) return refuse(&c, "a market order with a price");
        if (seen[F_ACCOUNT] && (number[F_ACCOUNT] < 0 || number[F_ACCOUNT] > (int64_t)UINT32_MAX))
            return refuse(&c, "account outside 0 .. 2^32-1");
        cmd->type = CB_CMD_NEW;
        cmd->side = (uint8_t)choice[F_SIDE];
        cmd->order_type = market ? CB_ORDER_MARKET : CB_ORDER_LIMIT;
        cmd->time_in_force = (uint8_t)(seen[F_TIF] ? choice[F_TIF] : market ? CB_TIF_IOC : CB_TIF_GTC);
        cmd->self_trade = (uint8_t)choice[F_STP];
        cmd->account = (uint32_t)number[F_ACCOUNT];
        cmd->price = number[F_PRICE];
        cmd->quantity = number[F_QUANTITY];
        break;
    }
    case 1:
        cmd->type = CB_CMD_CANCEL;
        break;
    default:
        if (!seen[F_PRICE] || !seen[F_QUANTITY]) return refuse(&c, "a replace without price and quantity");
        cmd->type = CB_CMD_REPLACE;
        cmd->price = number[F_PRICE];
        cmd->quantity = number[F_QUANTITY];
    }
    return 0;
}
