/*-------------------------------------------------------------------------
 *
 * signalbus_cli.h
 *		Declarations shared by the files of the signalbus command-line
 *		client.
 *
 * The client is a thin libpq program: every command is one or more calls
 * of the extension's SQL interface, in whatever schema the extension was
 * created in.
 *
 *	signalbus.c	main(): options, commands, --help texts;
 *	common.c	connecting as psql does, running a statement while
 *				watching SIGINT/SIGTERM, reporting the server's errors;
 *	flush.c		flush, flushordered, flushmany: choosing the tables,
 *				the --wait and --repeat loop;
 *	progress.c	flushmany's progress NOTICEs: a live line on a terminal,
 *				plain lines otherwise;
 *	show.c		signals, pending, status.
 *
 *-------------------------------------------------------------------------
 */
#ifndef SIGNALBUS_CLI_H
#define SIGNALBUS_CLI_H

#include <signal.h>

#include "libpq-fe.h"

#include "fe_utils/connect_utils.h"
#include "fe_utils/simple_list.h"

#ifndef SIGNALBUS_VERSION
#error "SIGNALBUS_VERSION must be defined (see cli/Makefile)"
#endif

/* the verbs */
typedef enum SbCommand
{
	SB_CMD_FLUSH,
	SB_CMD_FLUSHMANY,
	SB_CMD_FLUSHORDERED,
	SB_CMD_SIGNALS,
	SB_CMD_PENDING,
	SB_CMD_STATUS
} SbCommand;

/* everything the command line said */
typedef struct SbOptions
{
	SbCommand	command;
	ConnParams	cparams;		/* -d -h -p -U -w -W */
	bool		verbose;		/* -v: per-table lines, SQLSTATEs */
	SimpleStringList signals;	/* the SIGNAL arguments */
	SimpleStringList exclude;	/* -e */
	double		wait;			/* flush -w: seconds before each flush */
	double		repeat;			/* -r: period in seconds; < 0: run once */
	bool		expanded;		/* status -x */
} SbOptions;

/* common.c */
extern const char *progname;
extern bool sb_verbose;
extern volatile sig_atomic_t sb_stop_requests;
extern int	sb_cancel_threshold;

extern void sb_setup_signals(void);
extern PGconn *sb_connect(const ConnParams *cparams);
extern const char *sb_extension_schema(PGconn *conn);
extern PGresult *sb_exec(PGconn *conn, const char *sql,
						 int nparams, const char *const *params);
extern void sb_report_error(const PGresult *res, PGconn *conn);
extern bool sb_sleep(double seconds);
extern double sb_now(void);
extern void sb_set_tick(void (*tick) (void));

/* flush.c */
extern int	sb_run_flush(PGconn *conn, const char *schema, const SbOptions *opts);

/* progress.c */
extern void sb_progress_init(PGconn *conn);
extern void sb_progress_begin(const char *table);
extern bool sb_progress_end(long long *sent, bool succeeded, bool hide_idle);
extern void sb_progress_clear(void);

/* show.c */
extern int	sb_run_signals(PGconn *conn, const char *schema);
extern int	sb_run_pending(PGconn *conn, const char *schema);
extern int	sb_run_status(PGconn *conn, const char *schema, bool expanded);

#endif							/* SIGNALBUS_CLI_H */
