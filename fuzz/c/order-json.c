/* libFuzzer target: the Kafka ingress's JSON order parser (plugins/kafka/order_json.c) on any
 * bytes: it returns an order or a reason, never crashes, never reads past the message (ASan),
 * never overflows (UBSan), and what it returns is well-formed. */
#include <stdint.h>
#include <string.h>
#include <stdlib.h>

#include "order_json.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* An exact-size copy: a read past the message's end is caught. */
    char *copy = malloc(size ? size : 1);
    if (size) memcpy(copy, data, size);
    cb_json_order order;
    char why[200];
    int rc = cb_order_from_json(copy, size, &order, why, sizeof why);
    if (rc == 0) {
        if (order.symbol[0] == 0 || memchr(order.symbol, 0, sizeof order.symbol) == NULL) abort();
        if (order.command.version != CB_RECORD_VERSION || order.command.type < CB_CMD_NEW || order.command.type > CB_CMD_REPLACE) abort();
        if (order.command.order_id > (UINT64_C(1) << 48) - 1) abort();
    } else {
        if (rc != -1 || memchr(why, 0, sizeof why) == NULL || why[0] == 0) abort();
    }
    free(copy);
    return 0;
}
