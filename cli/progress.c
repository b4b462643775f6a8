/*-------------------------------------------------------------------------
 *
 * progress.c
 *		The server's NOTICEs, and flushmany's progress made of them.
 *
 * CALL signalbus_flushmany() reports progress as NOTICEs, at most every
 * ten seconds and once at the end:
 *
 *	signalbus_flushmany: table "t": N sent (R/s), about L left
 *	signalbus_flushmany: table "t": N sent in S s (R/s)
 *
 * A notice receiver parses them.  When stderr is a terminal they become one
 * line, rewritten in place, whose ETA and elapsed time keep moving between
 * two NOTICEs (the statement loop in common.c ticks every second);
 * otherwise each NOTICE becomes a plain log line.  Any other NOTICE or
 * WARNING is printed as psql prints it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres_fe.h"

#include <unistd.h>

#include "common/logging.h"

#include "signalbus_cli.h"

#define PROGRESS_PREFIX "signalbus_flushmany: table \""

static bool on_tty = false;

/* the table flushmany is working on (NULL: no CALL is running) */
static char *cur_table = NULL;
static double started_at;

/* the last progress NOTICE */
static bool have_report;
static long long last_sent;
static long long last_left;
static double last_rate;
static double last_report_at;

/* the final NOTICE */
static bool have_final;
static long long final_sent;
static double final_seconds;
static double final_rate;

/* width of the progress line on screen (0: none) */
static int	shown_width = 0;

/*
 * parse_progress: parse a flushmany NOTICE.  A table name may contain
 * anything, "\": " included, so every candidate end of the name is tried.
 */
static bool
parse_progress(const char *msg, bool *final, long long *sent, double *rate,
			   long long *left, double *seconds)
{
	const char *p;

	if (strncmp(msg, PROGRESS_PREFIX, strlen(PROGRESS_PREFIX)) != 0)
		return false;
	for (p = msg + strlen(PROGRESS_PREFIX); (p = strstr(p, "\": ")) != NULL; p++)
	{
		const char *q = p + 3;
		int			n = 0;

		if (sscanf(q, "%lld sent in %lf s (%lf/s)%n",
				   sent, seconds, rate, &n) == 3 && n > 0 && q[n] == '\0')
		{
			*final = true;
			*left = 0;
			return true;
		}
		n = 0;
		if (sscanf(q, "%lld sent (%lf/s), about %lld left%n",
				   sent, rate, left, &n) == 3 && n > 0 && q[n] == '\0')
		{
			*final = false;
			*seconds = 0;
			return true;
		}
	}
	return false;
}

/*
 * format_duration: "42s", "3m07s", "2h05m".
 */
static void
format_duration(char *buf, size_t len, double seconds)
{
	long		s = seconds < 0 ? 0 : (long) (seconds + 0.5);

	if (s < 60)
		snprintf(buf, len, "%lds", s);
	else if (s < 3600)
		snprintf(buf, len, "%ldm%02lds", s / 60, s % 60);
	else
		snprintf(buf, len, "%ldh%02ldm", s / 3600, (s % 3600) / 60);
}

/*
 * progress_text: the progress of the current table, as one line.
 */
static void
progress_text(char *buf, size_t len, double now)
{
	char		elapsed[32];
	char		eta[32];

	format_duration(elapsed, sizeof(elapsed), now - started_at);
	if (!have_report)
	{
		snprintf(buf, len, "%s: flushing, %s elapsed", cur_table, elapsed);
		return;
	}
	if (last_rate > 0)
		format_duration(eta, sizeof(eta),
						last_left / last_rate - (now - last_report_at));
	else
		strlcpy(eta, "unknown", sizeof(eta));
	snprintf(buf, len, "%s: %lld sent (%.0f/s), about %lld left, ETA %s, %s elapsed",
			 cur_table, last_sent, last_rate, last_left, eta, elapsed);
}

/*
 * show_line: (terminal only) rewrite the progress line in place.
 */
static void
show_line(const char *line)
{
	int			width = (int) strlen(line);

	fprintf(stderr, "\r%s", line);
	if (shown_width > width)
		fprintf(stderr, "%*s", shown_width - width, "");
	fflush(stderr);
	shown_width = width > 0 ? width : 1;
}

/*
 * sb_progress_clear: take the progress line off the screen, so that another
 * message can be printed (also the pre-callback of pg_log_*).
 */
void
sb_progress_clear(void)
{
	if (shown_width > 0)
	{
		fprintf(stderr, "\r%*s\r", shown_width, "");
		fflush(stderr);
		shown_width = 0;
	}
}

/* tick: called about once a second while a statement runs */
static void
progress_tick(void)
{
	char		line[1024];

	if (!on_tty || cur_table == NULL)
		return;
	progress_text(line, sizeof(line), sb_now());
	show_line(line);
}

/*
 * notice_receiver: flushmany's progress, or any other message as psql
 * prints it.
 */
static void
notice_receiver(void *arg, const PGresult *res)
{
	const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
	bool		final;
	long long	sent;
	long long	left;
	double		rate;
	double		seconds;

	if (cur_table != NULL && msg != NULL &&
		parse_progress(msg, &final, &sent, &rate, &left, &seconds))
	{
		if (final)
		{
			/* the line is printed by sb_progress_end() */
			have_final = true;
			final_sent = sent;
			final_seconds = seconds;
			final_rate = rate;
			return;
		}
		have_report = true;
		last_sent = sent;
		last_left = left;
		last_rate = rate;
		last_report_at = sb_now();
		if (on_tty)
			progress_tick();
		else
		{
			char		line[1024];

			progress_text(line, sizeof(line), last_report_at);
			fprintf(stderr, "%s\n", line);
		}
		return;
	}

	sb_progress_clear();
	fputs(PQresultErrorMessage(res), stderr);
	fflush(stderr);
}

/*
 * sb_progress_init: route the connection's NOTICEs and WARNINGs through
 * notice_receiver.
 */
void
sb_progress_init(PGconn *conn)
{
	on_tty = isatty(fileno(stderr));
	PQsetNoticeReceiver(conn, notice_receiver, NULL);
	pg_logging_set_pre_callback(sb_progress_clear);
	sb_set_tick(progress_tick);
}

/*
 * sb_progress_begin: flushmany starts on table.
 */
void
sb_progress_begin(const char *table)
{
	cur_table = pg_strdup(table);
	started_at = sb_now();
	have_report = false;
	have_final = false;
}

/*
 * sb_progress_end: flushmany is done with the current table.  Returns
 * whether the final NOTICE arrived, and then sets *sent.  When the CALL
 * succeeded, the final line is printed, unless hide_idle and nothing was
 * sent.
 */
bool
sb_progress_end(long long *sent, bool succeeded, bool hide_idle)
{
	bool		got = have_final;

	sb_progress_clear();
	if (have_final)
	{
		*sent = final_sent;
		if (succeeded && !(hide_idle && final_sent == 0))
			fprintf(stderr, "%s: %lld sent in %.1f s (%.0f/s)\n",
					cur_table, final_sent, final_seconds, final_rate);
	}
	free(cur_table);
	cur_table = NULL;
	have_report = false;
	have_final = false;
	return got;
}
