/*-------------------------------------------------------------------------
 *
 * bench_amqp.h
 *		Helpers shared by the benchmark programs (raw_publish.c, latency.c):
 *		connect to the broker the way signalbus does, publish a message
 *		shaped like a signalbus row, and read publisher confirms.
 *
 * Header-only on purpose: each program is built by bench/run.sh with one
 * cc command line.  librabbitmq 0.11 has no amqp_publisher_confirm_wait,
 * so confirms are read as basic.ack / basic.nack frames (mind `multiple`).
 *
 *-------------------------------------------------------------------------
 */
#ifndef BENCH_AMQP_H
#define BENCH_AMQP_H

#include <amqp.h>
#include <amqp_tcp_socket.h>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

/* signalbus's frame_max (src/amqp.c), so frames are split the same way */
#define BENCH_FRAME_MAX		131072

static const char *bench_progname = "bench";

static _Noreturn void
bench_die(const char *fmt,...)
{
	va_list		ap;

	va_start(ap, fmt);
	fprintf(stderr, "%s: ", bench_progname);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	exit(1);
}

/* bench_check_rpc: die with a readable reason if an RPC failed */
static inline void
bench_check_rpc(amqp_rpc_reply_t r, const char *what)
{
	switch (r.reply_type)
	{
		case AMQP_RESPONSE_NORMAL:
			return;
		case AMQP_RESPONSE_NONE:
			bench_die("%s: missing RPC reply", what);
		case AMQP_RESPONSE_LIBRARY_EXCEPTION:
			bench_die("%s: %s", what, amqp_error_string2(r.library_error));
		case AMQP_RESPONSE_SERVER_EXCEPTION:
			if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD)
			{
				amqp_connection_close_t *m = r.reply.decoded;

				bench_die("%s: connection closed by server: %u %.*s", what,
						  m->reply_code, (int) m->reply_text.len,
						  (char *) m->reply_text.bytes);
			}
			if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD)
			{
				amqp_channel_close_t *m = r.reply.decoded;

				bench_die("%s: channel closed by server: %u %.*s", what,
						  m->reply_code, (int) m->reply_text.len,
						  (char *) m->reply_text.bytes);
			}
			bench_die("%s: server exception, method 0x%08X", what, r.reply.id);
	}
	bench_die("%s: unknown reply type", what);
}

/* seconds on the given clock */
static inline double
bench_now(clockid_t clock)
{
	struct timespec ts;

	clock_gettime(clock, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static inline void
bench_sleep_ms(double ms)
{
	struct timespec ts;

	if (ms <= 0)
		return;
	ts.tv_sec = (time_t) (ms / 1000);
	ts.tv_nsec = (long) ((ms - ts.tv_sec * 1000.0) * 1e6);
	nanosleep(&ts, NULL);
}

/*
 * bench_connect: open a connection with channel 1, TCP_NODELAY as
 * signalbus sets it; confirm-mode if confirms is set.
 */
static inline amqp_connection_state_t
bench_connect(const char *url_arg, int confirms)
{
	struct amqp_connection_info ci;
	amqp_connection_state_t conn;
	amqp_socket_t *sock;
	char	   *url = strdup(url_arg);
	int			rc;
	int			one = 1;

	if (amqp_parse_url(url, &ci) != AMQP_STATUS_OK)
		bench_die("invalid URL: %s", url_arg);
	if (ci.ssl)
		bench_die("amqps:// is not supported here");
	conn = amqp_new_connection();
	if (!(sock = amqp_tcp_socket_new(conn)))
		bench_die("cannot create socket");
	if ((rc = amqp_socket_open(sock, ci.host, ci.port)) != AMQP_STATUS_OK)
		bench_die("cannot connect to %s:%d: %s", ci.host, ci.port,
				  amqp_error_string2(rc));
	(void) setsockopt(amqp_get_sockfd(conn), IPPROTO_TCP, TCP_NODELAY,
					  &one, sizeof(one));
	bench_check_rpc(amqp_login(conn, ci.vhost, 0, BENCH_FRAME_MAX, 0,
							   AMQP_SASL_METHOD_PLAIN, ci.user, ci.password),
					"login");
	amqp_channel_open(conn, 1);
	bench_check_rpc(amqp_get_rpc_reply(conn), "channel.open");
	if (confirms)
	{
		amqp_confirm_select(conn, 1);
		bench_check_rpc(amqp_get_rpc_reply(conn), "confirm.select");
	}
	free(url);
	return conn;
}

static inline void
bench_disconnect(amqp_connection_state_t conn)
{
	amqp_channel_close(conn, 1, AMQP_REPLY_SUCCESS);
	amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
	amqp_destroy_connection(conn);
}

/*
 * bench_body: the body signalbus sends for a row (id bigint, payload text)
 * of a table without a body column: to_json(row).
 */
static inline size_t
bench_body(char *buf, size_t size, long long id, const char *payload)
{
	return (size_t) snprintf(buf, size, "{\"id\":%lld,\"payload\":\"%s\"}",
							 id, payload);
}

/*
 * bench_publish: basic.publish to the default exchange, routing key = queue,
 * with the properties signalbus sets for such a row: application/json,
 * persistent.
 */
static inline void
bench_publish(amqp_connection_state_t conn, const char *queue,
			  const char *body, size_t len)
{
	amqp_basic_properties_t props;
	amqp_bytes_t b;
	int			rc;

	memset(&props, 0, sizeof(props));
	props._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG;
	props.content_type = amqp_cstring_bytes("application/json");
	props.delivery_mode = 2;
	b.bytes = (void *) body;
	b.len = len;
	rc = amqp_basic_publish(conn, 1, amqp_empty_bytes, amqp_cstring_bytes(queue),
							0, 0, &props, b);
	if (rc != AMQP_STATUS_OK)
		bench_die("basic.publish: %s", amqp_error_string2(rc));
}

/*
 * Publisher-confirm bookkeeping for tags (first, last]: how many are still
 * unconfirmed.  Tags are confirmed in any order; `multiple` confirms every
 * tag up to delivery_tag.
 */
typedef struct BenchConfirms
{
	uint64_t	first;			/* tags > first are tracked */
	uint64_t	last;			/* highest published tag */
	unsigned char *done;		/* done[tag - first - 1] */
	size_t		size;
	long		unresolved;
	long		nacked;
} BenchConfirms;

static inline void
bench_confirms_start(BenchConfirms *bc, uint64_t first)
{
	bc->first = bc->last = first;
	bc->unresolved = 0;
}

static inline void
bench_confirms_published(BenchConfirms *bc)
{
	size_t		i = (size_t) (bc->last - bc->first);

	if (i >= bc->size)
	{
		bc->size = bc->size ? bc->size * 2 : 1024;
		bc->done = realloc(bc->done, bc->size);
		if (!bc->done)
			bench_die("out of memory");
	}
	bc->done[i] = 0;
	bc->last++;
	bc->unresolved++;
}

static inline void
bench_confirm_tag(BenchConfirms *bc, uint64_t tag, int multiple, int nack)
{
	uint64_t	t = multiple ? bc->first + 1 : tag;

	for (; t <= tag && t <= bc->last; t++)
	{
		unsigned char *d;

		if (t <= bc->first)
			continue;
		d = &bc->done[t - bc->first - 1];
		if (!*d)
		{
			*d = 1;
			bc->unresolved--;
			if (nack)
				bc->nacked++;
		}
	}
}

/*
 * bench_read_confirms: apply confirm frames; wait up to timeout_s for the
 * first one (0: only what is ready).  Returns when at least one frame was
 * handled or nothing is ready; dies on a closed channel or connection.
 */
static inline void
bench_read_confirms(amqp_connection_state_t conn, BenchConfirms *bc,
					double timeout_s)
{
	struct timeval tv;
	int			first = 1;

	for (;;)
	{
		amqp_frame_t frame;
		int			rc;

		if (first)
		{
			tv.tv_sec = (time_t) timeout_s;
			tv.tv_usec = (suseconds_t) ((timeout_s - tv.tv_sec) * 1e6);
		}
		else
			tv.tv_sec = tv.tv_usec = 0;
		first = 0;
		rc = amqp_simple_wait_frame_noblock(conn, &frame, &tv);
		if (rc == AMQP_STATUS_TIMEOUT)
			return;
		if (rc != AMQP_STATUS_OK)
			bench_die("waiting for confirms: %s", amqp_error_string2(rc));
		if (frame.frame_type != AMQP_FRAME_METHOD)
			continue;
		switch (frame.payload.method.id)
		{
			case AMQP_BASIC_ACK_METHOD:
				{
					amqp_basic_ack_t *m = frame.payload.method.decoded;

					bench_confirm_tag(bc, m->delivery_tag, m->multiple, 0);
					break;
				}
			case AMQP_BASIC_NACK_METHOD:
				{
					amqp_basic_nack_t *m = frame.payload.method.decoded;

					bench_confirm_tag(bc, m->delivery_tag, m->multiple, 1);
					break;
				}
			case AMQP_CHANNEL_CLOSE_METHOD:
				{
					amqp_channel_close_t *m = frame.payload.method.decoded;

					bench_die("channel closed by server: %u %.*s", m->reply_code,
							  (int) m->reply_text.len, (char *) m->reply_text.bytes);
				}
			case AMQP_CONNECTION_CLOSE_METHOD:
				{
					amqp_connection_close_t *m = frame.payload.method.decoded;

					bench_die("connection closed by server: %u %.*s", m->reply_code,
							  (int) m->reply_text.len, (char *) m->reply_text.bytes);
				}
			case AMQP_CONNECTION_BLOCKED_METHOD:
				bench_die("the broker blocked the connection (resource alarm)");
			default:
				break;
		}
		amqp_maybe_release_buffers(conn);
	}
}

/* bench_wait_confirms: wait until every published tag is confirmed */
static inline void
bench_wait_confirms(amqp_connection_state_t conn, BenchConfirms *bc,
					double timeout_s)
{
	double		deadline = bench_now(CLOCK_MONOTONIC) + timeout_s;

	while (bc->unresolved > 0)
	{
		double		left = deadline - bench_now(CLOCK_MONOTONIC);

		if (left <= 0)
			bench_die("timed out after %.0f s waiting for %ld confirms",
					  timeout_s, bc->unresolved);
		bench_read_confirms(conn, bc, left);
	}
}

#endif							/* BENCH_AMQP_H */
