/*
 * amqp_dump.c -- test helper for signalbus: read what a RabbitMQ queue holds.
 *
 *   amqp-dump [--url URL] --queue Q [--count N] [--wait SECONDS]
 *       basic.get (auto-ack) messages from Q and print one JSON object per
 *       message per line.  Stops when the queue is empty, or when N messages
 *       were read; with --wait, keeps polling an empty queue up to SECONDS
 *       for N messages (or, without --count, for at least one).
 *       Exit status: 0 ok, 1 error, 2 fewer than --count messages arrived.
 *   amqp-dump [--url URL] [--exchange NAME[:TYPE]]...
 *             [--declare Q [--durable] [--purge] [--bind EXCHANGE:ROUTING_KEY]...]
 *       declare exchanges (durable=false, auto_delete=false, TYPE default
 *       direct), then queue Q (auto_delete=false, durable only with
 *       --durable: RabbitMQ deletes non-durable queues on stop_app/restart),
 *       purge it if --purge, bind it (split at the first ':'; a binding
 *       EXCHANGE:KEY=VALUE binds to a headers exchange, matching header
 *       KEY with the string VALUE).
 *   amqp-dump [--url URL] --length Q
 *       print the number of ready messages in Q (passive declare); exit 1
 *       if Q does not exist.
 *
 * URL default: amqp://guest:guest@localhost:$SB_AMQP_PORT/%2f (port 5672 if
 * SB_AMQP_PORT is unset).  Output line:
 *   {"exchange":..,"routing_key":..,"redelivered":false,"body":"..",
 *    ["body_hex":"..",] "properties":{only the properties that are set}}
 * body_hex is present only when the body is not valid UTF-8 (then "body" has
 * U+FFFD in place of the invalid bytes).
 */
#include <amqp.h>
#include <amqp_tcp_socket.h>

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static amqp_connection_state_t conn;

static _Noreturn void die(const char *fmt, ...) {
	va_list ap;

	va_start(ap, fmt);
	fputs("amqp-dump: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	exit(1);
}

/* Die with a readable reason if an RPC failed. */
static void check_rpc(amqp_rpc_reply_t r, const char *what) {
	switch (r.reply_type) {
		case AMQP_RESPONSE_NORMAL:
			return;
		case AMQP_RESPONSE_NONE:
			die("%s: missing RPC reply", what);
		case AMQP_RESPONSE_LIBRARY_EXCEPTION:
			die("%s: %s", what, amqp_error_string2(r.library_error));
		case AMQP_RESPONSE_SERVER_EXCEPTION:
			if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
				amqp_connection_close_t *m = r.reply.decoded;

				die("%s: connection closed by server: %u %.*s", what, m->reply_code,
					(int) m->reply_text.len, (char *) m->reply_text.bytes);
			}
			if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
				amqp_channel_close_t *m = r.reply.decoded;

				die("%s: channel closed by server: %u %.*s", what, m->reply_code,
					(int) m->reply_text.len, (char *) m->reply_text.bytes);
			}
			die("%s: server exception, method 0x%08X", what, r.reply.id);
	}
	die("%s: unknown reply type", what);
}

/* Length of the valid UTF-8 sequence at p (1-4), or 0 if invalid. */
static size_t utf8_seq(const unsigned char *p, size_t n) {
	uint32_t	cp;
	size_t		len, i;

	if (p[0] < 0x80)
		return 1;
	if (p[0] >= 0xC2 && p[0] <= 0xDF)
		len = 2, cp = p[0] & 0x1F;
	else if (p[0] >= 0xE0 && p[0] <= 0xEF)
		len = 3, cp = p[0] & 0x0F;
	else if (p[0] >= 0xF0 && p[0] <= 0xF4)
		len = 4, cp = p[0] & 0x07;
	else
		return 0;
	if (n < len)
		return 0;
	for (i = 1; i < len; i++) {
		if ((p[i] & 0xC0) != 0x80)
			return 0;
		cp = (cp << 6) | (p[i] & 0x3F);
	}
	if ((len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
		(len == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
		return 0;
	return len;
}

static int	is_utf8(amqp_bytes_t b) {
	const unsigned char *p = b.bytes;
	size_t		i = 0, l;

	while (i < b.len) {
		if ((l = utf8_seq(p + i, b.len - i)) == 0)
			return 0;
		i += l;
	}
	return 1;
}

/* Print b as a JSON string; invalid UTF-8 bytes become U+FFFD. */
static void put_str(amqp_bytes_t b) {
	const unsigned char *p = b.bytes;
	size_t		i = 0, l;

	putchar('"');
	while (i < b.len) {
		unsigned char c = p[i];

		if ((l = utf8_seq(p + i, b.len - i)) == 0) {
			fputs("\\ufffd", stdout);
			i++;
			continue;
		}
		if (c == '"' || c == '\\')
			printf("\\%c", c);
		else if (c == '\n')
			fputs("\\n", stdout);
		else if (c == '\r')
			fputs("\\r", stdout);
		else if (c == '\t')
			fputs("\\t", stdout);
		else if (c < 0x20 || c == 0x7F)
			printf("\\u%04x", c);
		else
			fwrite(p + i, 1, l, stdout);
		i += l;
	}
	putchar('"');
}

/* Shortest representation that reads back as the same double. */
static void put_double(double d) {
	char		buf[40];
	int			prec;

	if (!isfinite(d)) {
		fputs("null", stdout);
		return;
	}
	for (prec = 15; prec < 17; prec++) {
		snprintf(buf, sizeof buf, "%.*g", prec, d);
		if (strtod(buf, NULL) == d)
			break;
	}
	snprintf(buf, sizeof buf, "%.*g", prec, d);
	fputs(buf, stdout);
}

static void put_table(const amqp_table_t *t);

static void put_value(const amqp_field_value_t *v) {
	int			i;

	switch (v->kind) {
		case AMQP_FIELD_KIND_BOOLEAN: fputs(v->value.boolean ? "true" : "false", stdout); break;
		case AMQP_FIELD_KIND_I8: printf("%d", v->value.i8); break;
		case AMQP_FIELD_KIND_U8: printf("%u", v->value.u8); break;
		case AMQP_FIELD_KIND_I16: printf("%d", v->value.i16); break;
		case AMQP_FIELD_KIND_U16: printf("%u", v->value.u16); break;
		case AMQP_FIELD_KIND_I32: printf("%d", v->value.i32); break;
		case AMQP_FIELD_KIND_U32: printf("%u", v->value.u32); break;
		case AMQP_FIELD_KIND_I64: printf("%lld", (long long) v->value.i64); break;
		case AMQP_FIELD_KIND_U64:
		case AMQP_FIELD_KIND_TIMESTAMP:
			printf("%llu", (unsigned long long) v->value.u64);
			break;
		case AMQP_FIELD_KIND_F32: put_double(v->value.f32); break;
		case AMQP_FIELD_KIND_F64: put_double(v->value.f64); break;
		case AMQP_FIELD_KIND_DECIMAL:
			put_double(v->value.decimal.value / pow(10, v->value.decimal.decimals));
			break;
		case AMQP_FIELD_KIND_UTF8:
		case AMQP_FIELD_KIND_BYTES: put_str(v->value.bytes); break;
		case AMQP_FIELD_KIND_VOID: fputs("null", stdout); break;
		case AMQP_FIELD_KIND_TABLE: put_table(&v->value.table); break;
		case AMQP_FIELD_KIND_ARRAY:
			putchar('[');
			for (i = 0; i < v->value.array.num_entries; i++) {
				if (i)
					putchar(',');
				put_value(&v->value.array.entries[i]);
			}
			putchar(']');
			break;
		default: printf("\"<field kind %c>\"", v->kind); break;
	}
}

static void put_table(const amqp_table_t *t) {
	int			i;

	putchar('{');
	for (i = 0; i < t->num_entries; i++) {
		if (i)
			putchar(',');
		put_str(t->entries[i].key);
		putchar(':');
		put_value(&t->entries[i].value);
	}
	putchar('}');
}

static void put_message(amqp_bytes_t exchange, amqp_bytes_t routing_key,
						int redelivered, const amqp_message_t *msg) {
	const amqp_basic_properties_t *p = &msg->properties;
	size_t		i;
	int			n = 0;

#define SEP() (n++ ? putchar(',') : 0)
#define STRPROP(flag, field) \
	if (p->_flags & flag) { SEP(); printf("\"%s\":", #field); put_str(p->field); }

	fputs("{\"exchange\":", stdout);
	put_str(exchange);
	fputs(",\"routing_key\":", stdout);
	put_str(routing_key);
	printf(",\"redelivered\":%s,\"body\":", redelivered ? "true" : "false");
	put_str(msg->body);
	if (!is_utf8(msg->body)) {
		fputs(",\"body_hex\":\"", stdout);
		for (i = 0; i < msg->body.len; i++)
			printf("%02x", ((unsigned char *) msg->body.bytes)[i]);
		putchar('"');
	}
	fputs(",\"properties\":{", stdout);
	STRPROP(AMQP_BASIC_CONTENT_TYPE_FLAG, content_type);
	STRPROP(AMQP_BASIC_CONTENT_ENCODING_FLAG, content_encoding);
	if (p->_flags & AMQP_BASIC_DELIVERY_MODE_FLAG)
		SEP(), printf("\"delivery_mode\":%u", p->delivery_mode);
	if (p->_flags & AMQP_BASIC_PRIORITY_FLAG)
		SEP(), printf("\"priority\":%u", p->priority);
	STRPROP(AMQP_BASIC_CORRELATION_ID_FLAG, correlation_id);
	STRPROP(AMQP_BASIC_REPLY_TO_FLAG, reply_to);
	STRPROP(AMQP_BASIC_EXPIRATION_FLAG, expiration);
	STRPROP(AMQP_BASIC_MESSAGE_ID_FLAG, message_id);
	if (p->_flags & AMQP_BASIC_TIMESTAMP_FLAG)
		SEP(), printf("\"timestamp\":%llu", (unsigned long long) p->timestamp);
	STRPROP(AMQP_BASIC_TYPE_FLAG, type);
	STRPROP(AMQP_BASIC_USER_ID_FLAG, user_id);
	STRPROP(AMQP_BASIC_APP_ID_FLAG, app_id);
	STRPROP(AMQP_BASIC_CLUSTER_ID_FLAG, cluster_id);
	if (p->_flags & AMQP_BASIC_HEADERS_FLAG) {
		SEP();
		fputs("\"headers\":", stdout);
		put_table(&p->headers);
	}
	fputs("}}\n", stdout);
	fflush(stdout);
}

static double now(void) {
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void connect_broker(const char *url_arg) {
	struct amqp_connection_info ci;
	amqp_socket_t *sock;
	char	   *url = strdup(url_arg);
	int			rc;

	if (amqp_parse_url(url, &ci) != AMQP_STATUS_OK)
		die("invalid URL: %s", url_arg);
	if (ci.ssl)
		die("amqps:// is not supported by this tool");
	conn = amqp_new_connection();
	if (!(sock = amqp_tcp_socket_new(conn)))
		die("cannot create socket");
	if ((rc = amqp_socket_open(sock, ci.host, ci.port)) != AMQP_STATUS_OK)
		die("cannot connect to %s:%d: %s", ci.host, ci.port, amqp_error_string2(rc));
	check_rpc(amqp_login(conn, ci.vhost, 0, 131072, 0, AMQP_SASL_METHOD_PLAIN,
						 ci.user, ci.password), "login");
	amqp_channel_open(conn, 1);
	check_rpc(amqp_get_rpc_reply(conn), "channel.open");
	free(url);
}

static void disconnect_broker(void) {
	amqp_channel_close(conn, 1, AMQP_REPLY_SUCCESS);
	amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
	amqp_destroy_connection(conn);
}

/* Read up to count (0: all) messages; returns how many were read. */
static long dump(const char *queue, long count, double wait) {
	double		deadline = now() + wait;
	long		got = 0;

	while (count == 0 || got < count) {
		amqp_rpc_reply_t r = amqp_basic_get(conn, 1, amqp_cstring_bytes(queue), 1);
		amqp_basic_get_ok_t *ok;
		amqp_bytes_t ex, rk;
		amqp_message_t msg;
		int			redelivered;

		check_rpc(r, "basic.get");
		if (r.reply.id == AMQP_BASIC_GET_EMPTY_METHOD) {
			if (now() >= deadline || (count == 0 && got > 0))
				break;
			nanosleep(&(struct timespec) {0, 50 * 1000 * 1000}, NULL);
			continue;
		}
		ok = r.reply.decoded;
		/* copy: reading the content frames may reuse the decode pool */
		ex = amqp_bytes_malloc_dup(ok->exchange);
		rk = amqp_bytes_malloc_dup(ok->routing_key);
		redelivered = ok->redelivered;
		check_rpc(amqp_read_message(conn, 1, &msg, 0), "read message");
		put_message(ex, rk, redelivered, &msg);
		amqp_destroy_message(&msg);
		amqp_bytes_free(ex);
		amqp_bytes_free(rk);
		amqp_maybe_release_buffers(conn);
		got++;
	}
	return got;
}

static void usage(void) {
	fputs("usage: amqp-dump [--url URL] --queue Q [--count N] [--wait SECONDS]\n"
		  "       amqp-dump [--url URL] [--exchange NAME[:TYPE]]...\n"
		  "                 [--declare Q [--durable] [--purge] [--bind EXCHANGE:ROUTING_KEY]...]\n"
		  "       amqp-dump [--url URL] --length Q\n", stderr);
	exit(1);
}

int main(int argc, char **argv) {
	char		defurl[128];
	const char *url = NULL, *queue = NULL, *declare = NULL, *length = NULL;
	const char *binds[64], *exchanges[64];
	int			nbinds = 0, nexchanges = 0, purge = 0, durable = 0, i;
	long		count = 0;
	double		wait = 0;

	for (i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (!strcmp(a, "--purge") || !strcmp(a, "--durable")) {
			*(a[2] == 'p' ? &purge : &durable) = 1;
			continue;
		}
		if (!v || strncmp(a, "--", 2) != 0)
			usage();
		i++;
		if (!strcmp(a, "--url"))
			url = v;
		else if (!strcmp(a, "--queue"))
			queue = v;
		else if (!strcmp(a, "--count"))
			count = atol(v);
		else if (!strcmp(a, "--wait"))
			wait = atof(v);
		else if (!strcmp(a, "--declare"))
			declare = v;
		else if (!strcmp(a, "--length"))
			length = v;
		else if (!strcmp(a, "--bind") && nbinds < 64 && strchr(v, ':'))
			binds[nbinds++] = v;
		else if (!strcmp(a, "--exchange") && nexchanges < 64)
			exchanges[nexchanges++] = v;
		else
			usage();
	}
	if (!!queue + !!(declare || nexchanges) + !!length != 1 || count < 0 || wait < 0)
		usage();
	if (!url) {
		const char *port = getenv("SB_AMQP_PORT");

		snprintf(defurl, sizeof defurl, "amqp://guest:guest@localhost:%s/%%2f",
				 port && *port ? port : "5672");
		url = defurl;
	}

	connect_broker(url);
	if (declare || nexchanges) {
		for (i = 0; i < nexchanges; i++) {
			char	   *name = strdup(exchanges[i]), *type = strchr(name, ':');

			if (type)
				*type++ = '\0';
			amqp_exchange_declare(conn, 1, amqp_cstring_bytes(name),
								  amqp_cstring_bytes(type ? type : "direct"),
								  0, 0, 0, 0, amqp_empty_table);
			check_rpc(amqp_get_rpc_reply(conn), "exchange.declare");
			free(name);
		}
		if (declare) {
			amqp_queue_declare(conn, 1, amqp_cstring_bytes(declare), 0, durable,
							   0, 0, amqp_empty_table);
			check_rpc(amqp_get_rpc_reply(conn), "queue.declare");
		}
		if (purge && declare) {
			amqp_queue_purge(conn, 1, amqp_cstring_bytes(declare));
			check_rpc(amqp_get_rpc_reply(conn), "queue.purge");
		}
		for (i = 0; declare && i < nbinds; i++) {
			char	   *ex = strdup(binds[i]), *rk = strchr(ex, ':');
			char	   *eq;
			amqp_table_entry_t match[2];
			amqp_table_t args = amqp_empty_table;

			*rk++ = '\0';
			/* EXCHANGE:KEY=VALUE binds to a headers exchange (x-match all) */
			if ((eq = strchr(rk, '=')) != NULL) {
				*eq++ = '\0';
				match[0].key = amqp_cstring_bytes("x-match");
				match[0].value.kind = AMQP_FIELD_KIND_UTF8;
				match[0].value.value.bytes = amqp_cstring_bytes("all");
				match[1].key = amqp_cstring_bytes(rk);
				match[1].value.kind = AMQP_FIELD_KIND_UTF8;
				match[1].value.value.bytes = amqp_cstring_bytes(eq);
				args.num_entries = 2;
				args.entries = match;
				rk = "";
			}
			amqp_queue_bind(conn, 1, amqp_cstring_bytes(declare),
							amqp_cstring_bytes(ex), amqp_cstring_bytes(rk), args);
			check_rpc(amqp_get_rpc_reply(conn), "queue.bind");
			free(ex);
		}
	} else if (length) {
		amqp_queue_declare_ok_t *ok;

		ok = amqp_queue_declare(conn, 1, amqp_cstring_bytes(length), 1, 0, 0, 0,
								amqp_empty_table);
		check_rpc(amqp_get_rpc_reply(conn), "queue.declare (passive)");
		printf("%u\n", ok->message_count);
	} else {
		long		got = dump(queue, count, wait);

		disconnect_broker();
		return count > 0 && got < count ? 2 : 0;
	}
	disconnect_broker();
	return 0;
}
