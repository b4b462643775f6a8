/*-------------------------------------------------------------------------
 *
 * signalbus.c
 *		The signalbus command-line client: flush pending signals and show
 *		the state of the signalbus extension, as "flask signalbus" does for
 *		Flask-SignalBus.
 *
 *	signalbus [CONNECTION-OPTION]... COMMAND [OPTION]... [SIGNAL]...
 *
 * Options before the command are the connection options (psql's) and -v;
 * after it, the command's own options, and the connection options again.
 * One clash, kept for the seed's sake: after "flush", -w is --wait, and
 * "never prompt for a password" is spelled --no-password.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres_fe.h"

#include <locale.h>
#include <math.h>

#include "common/logging.h"
#include "getopt_long.h"

#include "signalbus_cli.h"

/* codes of the long-only options */
#define OPT_NO_PASSWORD		1000
#define OPT_WAIT			1001	/* -w after "flush" */
#define OPT_HELP			1002

typedef struct CommandInfo
{
	const char *name;
	SbCommand	command;
	const char *shortopts;		/* the command's own short options */
	void		(*usage) (void);
} CommandInfo;

static void usage(void);
static void usage_flush(void);
static void usage_flushmany(void);
static void usage_flushordered(void);
static void usage_signals(void);
static void usage_pending(void);
static void usage_status(void);

/* after "flush", -w means --wait */
static const CommandInfo commands[] = {
	{"flush", SB_CMD_FLUSH, "e:r:w:", usage_flush},
	{"flushmany", SB_CMD_FLUSHMANY, "e:r:w", usage_flushmany},
	{"flushordered", SB_CMD_FLUSHORDERED, "e:r:w", usage_flushordered},
	{"signals", SB_CMD_SIGNALS, "w", usage_signals},
	{"pending", SB_CMD_PENDING, "w", usage_pending},
	{"status", SB_CMD_STATUS, "wx", usage_status},
	{NULL}
};

/* every long option; each command accepts those of its short options */
static const struct option long_options[] = {
	{"dbname", required_argument, NULL, 'd'},
	{"host", required_argument, NULL, 'h'},
	{"port", required_argument, NULL, 'p'},
	{"username", required_argument, NULL, 'U'},
	{"no-password", no_argument, NULL, OPT_NO_PASSWORD},
	{"password", no_argument, NULL, 'W'},
	{"verbose", no_argument, NULL, 'v'},
	{"version", no_argument, NULL, 'V'},
	{"help", no_argument, NULL, OPT_HELP},
	{"exclude", required_argument, NULL, 'e'},
	{"wait", required_argument, NULL, OPT_WAIT},
	{"repeat", required_argument, NULL, 'r'},
	{"expanded", no_argument, NULL, 'x'},
	{NULL, 0, NULL, 0}
};

static void
try_help(const CommandInfo *cmd)
{
	if (cmd)
		pg_log_error_hint("Try \"%s %s --help\" for more information.",
						  progname, cmd->name);
	else
		pg_log_error_hint("Try \"%s --help\" for more information.", progname);
	exit(1);
}

/*
 * parse_seconds: a number of seconds (a decimal fraction is fine), >= 0.
 */
static double
parse_seconds(const char *arg, const char *option, const CommandInfo *cmd)
{
	char	   *end;
	double		v;

	errno = 0;
	v = strtod(arg, &end);
	if (end == arg || *end != '\0' || errno != 0 || isnan(v) || isinf(v) ||
		v < 0 || v > 1e8)
	{
		pg_log_error("invalid value \"%s\" for option %s: a number of seconds is expected",
					 arg, option);
		try_help(cmd);
	}
	return v;
}

/*
 * option_name: how to name option code c in a message.
 */
static const char *
option_name(int c)
{
	const struct option *o;
	static char buf[64];

	for (o = long_options; o->name; o++)
		if (o->val == c)
			break;
	if (c < 256 && o->name)
		snprintf(buf, sizeof(buf), "-%c/--%s", c, o->name);
	else if (o->name)
		snprintf(buf, sizeof(buf), "--%s", o->name);
	else
		snprintf(buf, sizeof(buf), "-%c", c);
	return buf;
}

/*
 * option_allowed: whether short option c belongs to cmd (or, before the
 * command, to the program).
 */
static bool
option_allowed(int c, const CommandInfo *cmd)
{
	if ((c < 256 && strchr("dhpUWvV?", c) != NULL) ||
		c == OPT_NO_PASSWORD || c == OPT_HELP)
		return true;
	if (cmd == NULL)
		return c == 'w';
	if (c == OPT_WAIT)
		return cmd->command == SB_CMD_FLUSH;
	return c < 256 && strchr(cmd->shortopts, c) != NULL;
}

/*
 * parse_args: fill opts from the command line.  Options before the command
 * word are the program's; after it, options and SIGNALs may come in any
 * order ("--" ends the options).
 */
static void
parse_args(int argc, char **argv, SbOptions *opts)
{
	const CommandInfo *cmd = NULL;
	char		shortopts[64];

	/* the commands' options too, to say they must follow a command */
	strlcpy(shortopts, "+d:h:p:U:WvV?we:r:x", sizeof(shortopts));
	optind = 1;
	while (optind < argc)
	{
		int			before = optind;
		int			c;

		c = getopt_long(argc, argv, shortopts, long_options, NULL);
		if (c == -1)
		{
			if (optind > before)
			{
				/* "--": the rest are SIGNALs */
				if (cmd == NULL)
				{
					pg_log_error("no command specified");
					try_help(NULL);
				}
				while (optind < argc)
					simple_string_list_append(&opts->signals, argv[optind++]);
				break;
			}
			if (cmd == NULL)
			{
				const CommandInfo *ci;

				for (ci = commands; ci->name; ci++)
					if (strcmp(ci->name, argv[optind]) == 0)
						break;
				if (ci->name == NULL)
				{
					pg_log_error("unrecognized command \"%s\"", argv[optind]);
					try_help(NULL);
				}
				cmd = ci;
				opts->command = cmd->command;
				snprintf(shortopts, sizeof(shortopts), "+d:h:p:U:WvV?%s",
						 cmd->shortopts);
			}
			else if (cmd->command == SB_CMD_FLUSH ||
					 cmd->command == SB_CMD_FLUSHMANY ||
					 cmd->command == SB_CMD_FLUSHORDERED)
				simple_string_list_append(&opts->signals, argv[optind]);
			else
			{
				pg_log_error("command \"%s\" takes no arguments, but \"%s\" was given",
							 cmd->name, argv[optind]);
				try_help(cmd);
			}
			optind++;
			continue;
		}

		/* -w is --wait after "flush", --no-password elsewhere */
		if (c == 'w' && cmd != NULL && cmd->command == SB_CMD_FLUSH)
			c = OPT_WAIT;
		if (c != '?' && !option_allowed(c, cmd))
		{
			if (cmd)
				pg_log_error("option %s is not valid for command \"%s\"",
							 option_name(c), cmd->name);
			else
				pg_log_error("option %s must follow a command",
							 option_name(c));
			try_help(cmd);
		}

		switch (c)
		{
			case 'd':
				opts->cparams.dbname = pg_strdup(optarg);
				break;
			case 'h':
				opts->cparams.pghost = pg_strdup(optarg);
				break;
			case 'p':
				opts->cparams.pgport = pg_strdup(optarg);
				break;
			case 'U':
				opts->cparams.pguser = pg_strdup(optarg);
				break;
			case 'w':
			case OPT_NO_PASSWORD:
				opts->cparams.prompt_password = TRI_NO;
				break;
			case 'W':
				opts->cparams.prompt_password = TRI_YES;
				break;
			case 'v':
				opts->verbose = true;
				break;
			case 'V':
				printf("%s (signalbus) " SIGNALBUS_VERSION "\n", progname);
				exit(0);
				break;
			case 'e':
				simple_string_list_append(&opts->exclude, optarg);
				break;
			case OPT_WAIT:
				opts->wait = parse_seconds(optarg, "--wait", cmd);
				break;
			case 'r':
				opts->repeat = parse_seconds(optarg, "--repeat", cmd);
				break;
			case 'x':
				opts->expanded = true;
				break;
			case OPT_HELP:
				if (cmd)
					cmd->usage();
				else
					usage();
				exit(0);
				break;
			case '?':
				/* -?, or an invalid option (getopt said so) */
				if (strcmp(argv[optind - 1], "-?") == 0)
				{
					if (cmd)
						cmd->usage();
					else
						usage();
					exit(0);
				}
				try_help(cmd);
				break;
			default:
				try_help(cmd);
				break;
		}
	}

	if (cmd == NULL)
	{
		pg_log_error("no command specified");
		try_help(NULL);
	}
}

int
main(int argc, char **argv)
{
	SbOptions	opts;
	PGconn	   *conn;
	const char *schema;
	int			status;

	pg_logging_init(argv[0]);
	set_pglocale_pgservice(argv[0], PG_TEXTDOMAIN("signalbus"));
	/* the server's NOTICEs print numbers with a '.' */
	setlocale(LC_NUMERIC, "C");
	progname = get_progname(argv[0]);

	memset(&opts, 0, sizeof(opts));
	opts.cparams.prompt_password = TRI_DEFAULT;
	opts.repeat = -1;
	parse_args(argc, argv, &opts);
	sb_verbose = opts.verbose;

	sb_setup_signals();
	conn = sb_connect(&opts.cparams);
	if (conn == NULL)
		exit(1);
	sb_progress_init(conn);
	schema = sb_extension_schema(conn);
	if (schema == NULL)
	{
		PQfinish(conn);
		exit(1);
	}

	switch (opts.command)
	{
		case SB_CMD_FLUSH:
		case SB_CMD_FLUSHMANY:
		case SB_CMD_FLUSHORDERED:
			status = sb_run_flush(conn, schema, &opts);
			break;
		case SB_CMD_SIGNALS:
			status = sb_run_signals(conn, schema);
			break;
		case SB_CMD_PENDING:
			status = sb_run_pending(conn, schema);
			break;
		case SB_CMD_STATUS:
			status = sb_run_status(conn, schema, opts.expanded);
			break;
		default:
			status = 1;
			break;
	}

	PQfinish(conn);
	return status;
}

/* --help texts */

static void
usage_connection(bool in_flush)
{
	printf("\nConnection options (before or after the command):\n");
	printf("  -d, --dbname=DBNAME      database name or connection string to connect to\n");
	printf("  -h, --host=HOSTNAME      database server host or socket directory\n");
	printf("  -p, --port=PORT          database server port\n");
	printf("  -U, --username=USERNAME  database user name\n");
	if (in_flush)
		printf("      --no-password        never prompt for password (-w is --wait here)\n");
	else
		printf("  -w, --no-password        never prompt for password\n");
	printf("  -W, --password           force password prompt\n");
}

static void
usage_general(void)
{
	printf("  -v, --verbose            per-table counts; SQLSTATE in error messages\n");
	printf("  -?, --help               show this help, then exit\n");
}

static void
usage_footer(void)
{
	printf("\nLike psql, %s reads PGHOST, PGPORT, PGDATABASE, PGUSER and the other\n"
		   "PG* environment variables, the service file and ~/.pgpass.\n", progname);
	printf("Exit status is 0 on success, 1 on error.\n");
}

static void
usage(void)
{
	printf("%s sends the pending signals of the signalbus extension's signal tables\n"
		   "over AMQP, and shows their state.\n\n", progname);
	printf("Usage:\n");
	printf("  %s [CONNECTION-OPTION]... COMMAND [OPTION]... [SIGNAL]...\n", progname);
	printf("\nCommands:\n");
	printf("  flush          send pending signals (signalbus_flush)\n");
	printf("  flushmany      send a huge backlog, committing after every burst\n");
	printf("  flushordered   send pending signals in each table's order_by order\n");
	printf("  signals        list the signal tables\n");
	printf("  pending        show how many signals are pending, by table\n");
	printf("  status         show the signalbus background workers\n");
	printf("\nGeneral options:\n");
	printf("  -v, --verbose            per-table counts; SQLSTATE in error messages\n");
	printf("  -V, --version            output version information, then exit\n");
	printf("  -?, --help               show this help, then exit\n");
	usage_connection(false);
	printf("\nSIGNAL is the name of a signal table, schema-qualified or found through\n"
		   "search_path.  Run \"%s COMMAND --help\" for a command's options.\n",
		   progname);
	usage_footer();
}

static void
usage_flush(void)
{
	printf("%s flush sends the pending signals of signal tables, one table at a time,\n"
		   "and prints how many messages the broker confirmed.  Without SIGNAL, it\n"
		   "flushes every signal table you may flush (SELECT and DELETE privileges).\n\n",
		   progname);
	printf("Usage:\n");
	printf("  %s [CONNECTION-OPTION]... flush [OPTION]... [SIGNAL]...\n", progname);
	printf("\nOptions:\n");
	printf("  -e, --exclude=SIGNAL     do not flush SIGNAL (may be repeated)\n");
	printf("  -w, --wait=SECONDS       wait SECONDS before flushing, to let the\n"
		   "                           commit-time sender go first (default: 0)\n");
	printf("  -r, --repeat=SECONDS     flush every SECONDS until SIGINT or SIGTERM, which\n"
		   "                           stop the loop between two flushes (exit status 0)\n");
	usage_general();
	usage_connection(true);
	usage_footer();
}

static void
usage_flushmany(void)
{
	printf("%s flushmany sends a huge backlog of pending signals, one table at a time,\n"
		   "with CALL signalbus_flushmany(), which commits after every burst.  Its\n"
		   "progress (sent, rate, left, ETA) is a live line when stderr is a terminal,\n"
		   "plain lines otherwise.  Without SIGNAL, it flushes every signal table you\n"
		   "may flush.\n\n", progname);
	printf("Usage:\n");
	printf("  %s [CONNECTION-OPTION]... flushmany [OPTION]... [SIGNAL]...\n", progname);
	printf("\nOptions:\n");
	printf("  -e, --exclude=SIGNAL     do not flush SIGNAL (may be repeated)\n");
	printf("  -r, --repeat=SECONDS     flush every SECONDS until SIGINT or SIGTERM, which\n"
		   "                           stop the loop between two tables (exit status 0)\n");
	usage_general();
	usage_connection(false);
	usage_footer();
}

static void
usage_flushordered(void)
{
	printf("%s flushordered sends the pending signals of signal tables in each\n"
		   "table's order_by order (its primary key's when it has none), waiting for\n"
		   "rows locked by another sender.  Without SIGNAL, it flushes every signal\n"
		   "table you may flush.\n\n", progname);
	printf("Usage:\n");
	printf("  %s [CONNECTION-OPTION]... flushordered [OPTION]... [SIGNAL]...\n", progname);
	printf("\nOptions:\n");
	printf("  -e, --exclude=SIGNAL     do not flush SIGNAL (may be repeated)\n");
	printf("  -r, --repeat=SECONDS     flush every SECONDS until SIGINT or SIGTERM, which\n"
		   "                           stop the loop between two flushes (exit status 0)\n");
	usage_general();
	usage_connection(false);
	usage_footer();
}

static void
usage_signals(void)
{
	printf("%s signals lists the signal tables, one a line.\n\n", progname);
	printf("Usage:\n");
	printf("  %s [CONNECTION-OPTION]... signals\n", progname);
	printf("\nOptions:\n");
	usage_general();
	usage_connection(false);
	usage_footer();
}

static void
usage_pending(void)
{
	printf("%s pending shows, for every signal table that holds pending signals,\n"
		   "how many it holds, then the total.\n\n", progname);
	printf("Usage:\n");
	printf("  %s [CONNECTION-OPTION]... pending\n", progname);
	printf("\nOptions:\n");
	usage_general();
	usage_connection(false);
	usage_footer();
}

static void
usage_status(void)
{
	printf("%s status shows the signalbus background workers (the signalbus_status\n"
		   "view) as a table.\n\n", progname);
	printf("Usage:\n");
	printf("  %s [CONNECTION-OPTION]... status [OPTION]...\n", progname);
	printf("\nOptions:\n");
	printf("  -x, --expanded           one record per block, as psql's \\x\n");
	usage_general();
	usage_connection(false);
	usage_footer();
}
