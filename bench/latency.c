/*-------------------------------------------------------------------------
 *
 * latency.c
 *		How long a message takes to reach a consumer, one message at a
 *		time, with an idle system in between.
 *
 *	latency raw --url URL --queue Q [--count N] [--warmup W] [--interval-ms I]
 *		The raw round trip: a publisher on a confirm-mode channel publishes
 *		one persistent message, waits for its confirm, and a consumer (a
 *		second connection, basic.consume, auto-ack) receives it.  Reports
 *		publish -> delivered and publish -> confirmed.
 *
 *	latency pg --url URL --queue Q --conninfo C --table T [--count N] ...
 *		signalbus: one-row INSERT transactions (autocommit, so the INSERT
 *		is the commit) into signal table T, whose messages go to Q; the
 *		same consumer receives them.  Reports commit -> delivered, where
 *		"commit" is the moment the INSERT returned to the client (the
 *		transaction is committed and visible then), and INSERT sent ->
 *		delivered (that includes the commit's WAL flush).
 *
 * Both ends run in this process (the consumer in a thread) and read the
 * same clock, CLOCK_REALTIME: the consumer stamps a message as soon as
 * librabbitmq hands it over and matches it by the "id" in its body ({"id":
 * ..} is how signalbus sends a row without a body column, and how the raw
 * publisher writes its messages).  The next message is sent only after the
 * previous one arrived, and after --interval-ms more, so the worker (or
 * publisher) is idle when each one starts.  The first --warmup samples
 * are dropped.
 *
 * Prints one line per measure:
 *	<measure> n=N p50_ms=.. p99_ms=.. mean_ms=.. max_ms=..
 *
 *-------------------------------------------------------------------------
 */
#include "bench_amqp.h"

#include <errno.h>
#include <libpq-fe.h>
#include <pthread.h>

#define RING 4096

typedef struct Delivery
{
	long long	id;
	double		at;
} Delivery;

static Delivery ring[RING];
static pthread_mutex_t ring_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ring_cond = PTHREAD_COND_INITIALIZER;
static volatile int stopping = 0;
static int	consumer_ready = 0;
static const char *url;
static const char *queue;

/* body_id: the number after "id": in a message body, or -1 */
static long long
body_id(amqp_bytes_t body)
{
	const char *p = body.bytes;
	const char *end = p + body.len;
	static const char key[] = "\"id\":";
	long long	v = 0;
	int			digits = 0;

	for (; p + sizeof(key) - 1 <= end; p++)
		if (memcmp(p, key, sizeof(key) - 1) == 0)
			break;
	if (p + sizeof(key) - 1 > end)
		return -1;
	for (p += sizeof(key) - 1; p < end && *p >= '0' && *p <= '9'; p++, digits++)
		v = v * 10 + (*p - '0');
	return digits ? v : -1;
}

static void *
consumer_main(void *arg)
{
	amqp_connection_state_t conn = bench_connect(url, 0);

	(void) arg;
	amqp_basic_consume(conn, 1, amqp_cstring_bytes(queue), amqp_empty_bytes,
					   0, 1, 0, amqp_empty_table);
	bench_check_rpc(amqp_get_rpc_reply(conn), "basic.consume");
	pthread_mutex_lock(&ring_lock);
	consumer_ready = 1;
	pthread_cond_broadcast(&ring_cond);
	pthread_mutex_unlock(&ring_lock);

	while (!stopping)
	{
		struct timeval tv = {0, 200 * 1000};
		amqp_envelope_t env;
		amqp_rpc_reply_t r;
		double		at;
		long long	id;

		amqp_maybe_release_buffers(conn);
		r = amqp_consume_message(conn, &env, &tv, 0);
		at = bench_now(CLOCK_REALTIME);
		if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
			r.library_error == AMQP_STATUS_TIMEOUT)
			continue;
		bench_check_rpc(r, "consume");
		id = body_id(env.message.body);
		amqp_destroy_envelope(&env);
		if (id < 0)
			continue;
		pthread_mutex_lock(&ring_lock);
		ring[id % RING].id = id;
		ring[id % RING].at = at;
		pthread_cond_broadcast(&ring_cond);
		pthread_mutex_unlock(&ring_lock);
	}
	bench_disconnect(conn);
	return NULL;
}

/* delivered_at: wait (up to timeout_s) for message id; its delivery time */
static double
delivered_at(long long id, double timeout_s)
{
	struct timespec deadline;
	double		at = -1;

	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_sec += (time_t) timeout_s;
	pthread_mutex_lock(&ring_lock);
	while (ring[id % RING].id != id)
	{
		if (pthread_cond_timedwait(&ring_cond, &ring_lock, &deadline) == ETIMEDOUT)
			break;
	}
	if (ring[id % RING].id == id)
		at = ring[id % RING].at;
	pthread_mutex_unlock(&ring_lock);
	if (at < 0)
		bench_die("message %lld did not arrive within %.0f s", id, timeout_s);
	return at;
}

static int
cmp_double(const void *a, const void *b)
{
	double		x = *(const double *) a;
	double		y = *(const double *) b;

	return x < y ? -1 : x > y;
}

/* report: percentiles (nearest rank) of n samples in seconds, as ms */
static void
report(const char *measure, double *v, int n)
{
	double		sum = 0;
	int			i;

	qsort(v, n, sizeof(double), cmp_double);
	for (i = 0; i < n; i++)
		sum += v[i];
#define RANK(p) v[(int) ((p) * n + 0.999999) - 1 < 0 ? 0 : (int) ((p) * n + 0.999999) - 1]
	printf("%s n=%d p50_ms=%.4f p99_ms=%.4f mean_ms=%.4f max_ms=%.4f\n",
		   measure, n, RANK(0.50) * 1e3, RANK(0.99) * 1e3, sum / n * 1e3,
		   v[n - 1] * 1e3);
#undef RANK
}

static void
usage(void)
{
	fprintf(stderr,
			"usage: latency raw --url URL --queue Q [--count N] [--warmup W] [--interval-ms I]\n"
			"       latency pg  --url URL --queue Q --conninfo C --table T [--count N] [--warmup W] [--interval-ms I]\n");
	exit(2);
}

int
main(int argc, char **argv)
{
	const char *mode;
	const char *conninfo = NULL;
	const char *table = NULL;
	int			count = 1000;
	int			warmup = 20;
	double		interval_ms = 2;
	double	   *a,
			   *b;
	int			n = 0;
	int			i;
	pthread_t	consumer;
	char		payload[65];
	char		body[256];

	bench_progname = "latency";
	if (argc < 2 || (strcmp(argv[1], "raw") != 0 && strcmp(argv[1], "pg") != 0))
		usage();
	mode = argv[1];
	for (i = 2; i + 1 < argc; i += 2)
	{
		if (!strcmp(argv[i], "--url"))
			url = argv[i + 1];
		else if (!strcmp(argv[i], "--queue"))
			queue = argv[i + 1];
		else if (!strcmp(argv[i], "--conninfo"))
			conninfo = argv[i + 1];
		else if (!strcmp(argv[i], "--table"))
			table = argv[i + 1];
		else if (!strcmp(argv[i], "--count"))
			count = atoi(argv[i + 1]);
		else if (!strcmp(argv[i], "--warmup"))
			warmup = atoi(argv[i + 1]);
		else if (!strcmp(argv[i], "--interval-ms"))
			interval_ms = atof(argv[i + 1]);
		else
			usage();
	}
	if (i != argc || !url || !queue || count <= 0 || warmup < 0 ||
		(mode[0] == 'p' && (!conninfo || !table)))
		usage();
	a = malloc(sizeof(double) * count);
	b = malloc(sizeof(double) * count);
	if (!a || !b)
		bench_die("out of memory");
	memset(payload, 'x', 64);
	payload[64] = '\0';

	if (pthread_create(&consumer, NULL, consumer_main, NULL) != 0)
		bench_die("cannot start the consumer thread");
	pthread_mutex_lock(&ring_lock);
	while (!consumer_ready)
		pthread_cond_wait(&ring_cond, &ring_lock);
	pthread_mutex_unlock(&ring_lock);

	if (mode[0] == 'r')
	{
		amqp_connection_state_t conn = bench_connect(url, 1);
		BenchConfirms bc = {0};
		uint64_t	tag = 0;

		for (i = 0; i < warmup + count; i++)
		{
			long long	id = i + 1;
			size_t		len = bench_body(body, sizeof(body), id, payload);
			double		t0,
						tconf,
						tdel;

			bench_confirms_start(&bc, tag);
			t0 = bench_now(CLOCK_REALTIME);
			bench_publish(conn, queue, body, len);
			bench_confirms_published(&bc);
			tag++;
			bench_wait_confirms(conn, &bc, 10);
			tconf = bench_now(CLOCK_REALTIME);
			if (bc.nacked)
				bench_die("the broker nacked message %lld", id);
			tdel = delivered_at(id, 10);
			if (i >= warmup)
			{
				a[n] = tdel - t0;
				b[n] = tconf - t0;
				n++;
			}
			bench_sleep_ms(interval_ms);
		}
		bench_disconnect(conn);
		stopping = 1;
		pthread_join(consumer, NULL);
		report("publish_to_deliver", a, n);
		report("publish_to_confirm", b, n);
	}
	else
	{
		PGconn	   *pg = PQconnectdb(conninfo);
		PGresult   *res;
		char		sql[512];
		const char *params[1] = {payload};

		if (PQstatus(pg) != CONNECTION_OK)
			bench_die("cannot connect to PostgreSQL: %s", PQerrorMessage(pg));
		snprintf(sql, sizeof(sql),
				 "INSERT INTO %s (payload) VALUES ($1) RETURNING id", table);
		res = PQprepare(pg, "ins", sql, 1, NULL);
		if (PQresultStatus(res) != PGRES_COMMAND_OK)
			bench_die("prepare: %s", PQerrorMessage(pg));
		PQclear(res);

		for (i = 0; i < warmup + count; i++)
		{
			long long	id;
			double		t0,
						tcommit,
						tdel;

			t0 = bench_now(CLOCK_REALTIME);
			res = PQexecPrepared(pg, "ins", 1, params, NULL, NULL, 0);
			tcommit = bench_now(CLOCK_REALTIME);
			if (PQresultStatus(res) != PGRES_TUPLES_OK)
				bench_die("insert: %s", PQerrorMessage(pg));
			id = atoll(PQgetvalue(res, 0, 0));
			PQclear(res);
			tdel = delivered_at(id, 10);
			if (i >= warmup)
			{
				a[n] = tdel - tcommit;
				b[n] = tdel - t0;
				n++;
			}
			bench_sleep_ms(interval_ms);
		}
		PQfinish(pg);
		stopping = 1;
		pthread_join(consumer, NULL);
		report("commit_to_deliver", a, n);
		report("insert_to_deliver", b, n);
	}
	return 0;
}
