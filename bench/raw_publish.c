/*-------------------------------------------------------------------------
 *
 * raw_publish.c
 *		The raw limit signalbus's drain is compared with: librabbitmq
 *		publishing persistent messages on a confirm-mode channel, one burst
 *		at a time -- publish a burst, wait for all its confirms, repeat.
 *		No PostgreSQL involved.
 *
 *	raw_publish --url URL --queue Q --count N --burst B [--payload-size S]
 *				[--rate R]
 *
 * --rate R: at most R messages a second on average (sleeping between
 * bursts), to load the broker as a given message rate does (the commit
 * path benchmark's "broker busy" run).
 *
 * Messages go to the default exchange with routing key Q (a durable queue
 * the caller declared and purged), with the body and properties signalbus
 * sends for a row (id bigint, payload text): {"id":..,"payload":".."},
 * application/json, delivery_mode 2.  As signalbus does, the confirms that
 * arrived are read every 128 publishes while a burst is written.
 *
 * Prints one line:  count=N burst=B seconds=T msg_per_s=R
 *
 *-------------------------------------------------------------------------
 */
#include "bench_amqp.h"

#include <time.h>

int
main(int argc, char **argv)
{
	const char *url = NULL;
	const char *queue = NULL;
	long		count = 0;
	long		burst = 0;
	int			payload_size = 64;
	double		rate = 0;
	char	   *payload;
	char	   *body;
	size_t		body_size;
	amqp_connection_state_t conn;
	BenchConfirms bc = {0};
	uint64_t	tag = 0;
	long		sent = 0;
	double		t0,
				t1;
	int			i;

	bench_progname = "raw_publish";
	for (i = 1; i + 1 < argc; i += 2)
	{
		if (!strcmp(argv[i], "--url"))
			url = argv[i + 1];
		else if (!strcmp(argv[i], "--queue"))
			queue = argv[i + 1];
		else if (!strcmp(argv[i], "--count"))
			count = atol(argv[i + 1]);
		else if (!strcmp(argv[i], "--burst"))
			burst = atol(argv[i + 1]);
		else if (!strcmp(argv[i], "--payload-size"))
			payload_size = atoi(argv[i + 1]);
		else if (!strcmp(argv[i], "--rate"))
			rate = atof(argv[i + 1]);
		else
			break;
	}
	if (i != argc || !url || !queue || count <= 0 || burst <= 0 ||
		payload_size < 0 || payload_size > 100000 || rate < 0)
	{
		fprintf(stderr, "usage: raw_publish --url URL --queue Q --count N --burst B [--payload-size S] [--rate R]\n");
		return 2;
	}

	payload = malloc(payload_size + 1);
	body_size = payload_size + 64;
	body = malloc(body_size);
	if (!payload || !body)
		bench_die("out of memory");
	memset(payload, 'x', payload_size);
	payload[payload_size] = '\0';

	conn = bench_connect(url, 1);

	t0 = bench_now(CLOCK_MONOTONIC);
	while (sent < count)
	{
		long		n = count - sent < burst ? count - sent : burst;
		long		j;

		bench_confirms_start(&bc, tag);
		for (j = 0; j < n; j++)
		{
			size_t		len = bench_body(body, body_size, sent + j + 1, payload);

			bench_publish(conn, queue, body, len);
			bench_confirms_published(&bc);
			tag++;
			if ((j + 1) % 128 == 0)
				bench_read_confirms(conn, &bc, 0);
		}
		bench_wait_confirms(conn, &bc, 60);
		if (bc.nacked > 0)
			bench_die("the broker nacked %ld messages", bc.nacked);
		sent += n;
		if (rate > 0)
		{
			/* keep to the average rate: sleep until this burst is due */
			double		ahead = t0 + sent / rate - bench_now(CLOCK_MONOTONIC);

			if (ahead > 0)
			{
				struct timespec ts;

				ts.tv_sec = (time_t) ahead;
				ts.tv_nsec = (long) ((ahead - (double) ts.tv_sec) * 1e9);
				nanosleep(&ts, NULL);
			}
		}
	}
	t1 = bench_now(CLOCK_MONOTONIC);

	bench_disconnect(conn);
	printf("count=%ld burst=%ld seconds=%.6f msg_per_s=%.1f\n",
		   count, burst, t1 - t0, count / (t1 - t0));
	return 0;
}
