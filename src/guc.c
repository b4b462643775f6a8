/*-------------------------------------------------------------------------
 *
 * guc.c
 *		The configuration parameters of signalbus, all in one place.
 *
 *-------------------------------------------------------------------------
 */
#include "signalbus.h"

#include "miscadmin.h"
#include "utils/guc.h"

char	   *signalbus_amqp_url = NULL;
char	   *signalbus_databases = NULL;
bool		signalbus_autoflush = true;
int			signalbus_flush_interval = 5000;
int			signalbus_max_attempts = 5;
int			signalbus_confirm_timeout = 30000;
int			signalbus_queue_size = 65536;
int			signalbus_max_backoff = 60000;
char	   *signalbus_amqp_password_file = NULL;
char	   *signalbus_tls_ca_file = NULL;
char	   *signalbus_tls_cert_file = NULL;
char	   *signalbus_tls_key_file = NULL;
char	   *signalbus_tls_key_password = NULL;
char	   *signalbus_tls_key_password_file = NULL;
bool		signalbus_tls_verify_peer = true;
bool		signalbus_tls_verify_hostname = true;

/*
 * check_amqp_url: refuse a URL that librabbitmq cannot parse, so that a typo
 * fails at SET/reload time rather than in the worker.
 */
static bool
check_amqp_url(char **newval, void **extra, GucSource source)
{
	const char *detail = NULL;

	if (*newval == NULL || sb_amqp_url_is_valid(*newval, &detail))
		return true;
	/* PostgreSQL's own message would quote the value, password and all */
	GUC_check_errmsg("invalid value for parameter \"%s\"", "signalbus.amqp_url");
	GUC_check_errdetail("%s", detail);
	return false;
}

/*
 * sb_guc_init: define every GUC.  Called from _PG_init in any process that
 * loads the library; the postmaster-context settings only exist when the
 * library is preloaded.
 */
void
sb_guc_init(void)
{
	DefineCustomStringVariable("signalbus.amqp_url",
							   "URL of the AMQP broker that signals are sent to.",
							   "amqp://user:password@host:port/vhost, or amqps:// for TLS.",
							   &signalbus_amqp_url,
							   "amqp://guest:guest@localhost:5672/%2f",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY,
							   check_amqp_url, NULL, NULL);

	DefineCustomBoolVariable("signalbus.autoflush",
							 "Whether this session's commits wake the worker to send their signals.",
							 "When off, committed signals wait for the periodic sweep or an explicit flush.",
							 &signalbus_autoflush,
							 true,
							 PGC_USERSET,
							 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("signalbus.flush_interval",
							"How often the worker sweeps every signal table.",
							NULL,
							&signalbus_flush_interval,
							5000, 100, 3600 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("signalbus.max_attempts",
							"Failures of one row before it moves to signalbus_dead_letters.",
							NULL,
							&signalbus_max_attempts,
							5, 1, 1000000,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("signalbus.confirm_timeout",
							"How long to wait for the broker's publisher confirms of a burst.",
							NULL,
							&signalbus_confirm_timeout,
							30000, 100, 3600 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	/*
	 * Settings of the postmaster's lifetime can only be defined while the
	 * library is preloaded: anywhere else PostgreSQL refuses them.
	 */
	if (process_shared_preload_libraries_in_progress)
	{
		DefineCustomStringVariable("signalbus.databases",
								   "Comma-separated list of databases that get a signalbus worker.",
								   NULL,
								   &signalbus_databases,
								   "postgres",
								   PGC_POSTMASTER,
								   GUC_LIST_INPUT,
								   NULL, NULL, NULL);

		DefineCustomIntVariable("signalbus.queue_size",
								"Committed rows each database's commit queue holds for its worker.",
								"Rows that do not fit are sent by a sweep.",
								&signalbus_queue_size,
								65536, 16, 16 * 1024 * 1024,
								PGC_POSTMASTER,
								0,
								NULL, NULL, NULL);
	}

	DefineCustomIntVariable("signalbus.max_backoff",
							"Longest wait between two attempts to reach the broker.",
							NULL,
							&signalbus_max_backoff,
							60000, 1000, 3600 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomStringVariable("signalbus.amqp_password_file",
							   "File whose first line is the broker password; overrides the password in signalbus.amqp_url.",
							   "Keeps the password out of the configuration files and the server log.",
							   &signalbus_amqp_password_file,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("signalbus.tls_ca_file",
							   "File of CA certificates that the broker's certificate is checked against (amqps://).",
							   "Empty: the system's default CA store.",
							   &signalbus_tls_ca_file,
							   "",
							   PGC_SIGHUP,
							   0,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("signalbus.tls_cert_file",
							   "Client certificate presented to the broker (amqps://).",
							   NULL,
							   &signalbus_tls_cert_file,
							   "",
							   PGC_SIGHUP,
							   0,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("signalbus.tls_key_file",
							   "Private key of the client certificate (amqps://).",
							   NULL,
							   &signalbus_tls_key_file,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("signalbus.tls_key_password",
							   "Passphrase of the client's private key.",
							   NULL,
							   &signalbus_tls_key_password,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("signalbus.tls_key_password_file",
							   "File whose first line is the passphrase of the client's private key.",
							   "Keeps the passphrase out of the configuration files and the server log.",
							   &signalbus_tls_key_password_file,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);

	DefineCustomBoolVariable("signalbus.tls_verify_peer",
							 "Whether the broker's certificate must be signed by a trusted CA (amqps://).",
							 NULL,
							 &signalbus_tls_verify_peer,
							 true,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);

	DefineCustomBoolVariable("signalbus.tls_verify_hostname",
							 "Whether the broker's certificate must name the host in signalbus.amqp_url (amqps://).",
							 NULL,
							 &signalbus_tls_verify_hostname,
							 true,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);

	MarkGUCPrefixReserved("signalbus");
}
