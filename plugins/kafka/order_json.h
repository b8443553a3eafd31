/* An order message in JSON, as the Kafka ingress reads it (plugins/kafka/README.md has the
 * schema). A strict parser: one flat object, known keys once each, integers for numbers; any
 * other input is refused with a one-line reason. No allocation; no recursion. */
#ifndef CROSSBOOK_ORDER_JSON_H
#define CROSSBOOK_ORDER_JSON_H

#include <stddef.h>
#include <stdint.h>

#include "crossbook_plugin.h"

/* The largest JSON order message read; a longer one is refused. */
#define CB_JSON_MAX_MESSAGE 4096
#define CB_JSON_MAX_SYMBOL 64

typedef struct cb_json_order {
    char symbol[CB_JSON_MAX_SYMBOL]; /* NUL-terminated */
    cb_command command;              /* every field but symbol_id (the caller resolves the name) */
} cb_json_order;

/* 0 and *out filled, or -1 with a one-line reason in `why`. */
int cb_order_from_json(const char *text, size_t length, cb_json_order *out, char *why, size_t why_size);

#endif
