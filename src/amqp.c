/*-------------------------------------------------------------------------
 *
 * amqp.c
 *		The broker connection: the only file that includes librabbitmq.
 *
 * A connection has one channel in confirm mode.  A burst's messages are
 * written back to back (corked, so that the broker reads full segments),
 * then the broker's basic.ack / basic.nack / basic.return frames are read
 * until every message has an outcome or signalbus.confirm_timeout has
 * passed.  The next burst may be written before the last one's verdicts
 * are in: the frames are applied to every burst in flight.  librabbitmq's calls block and do not return for PostgreSQL's
 * signals, so every wait here is on the socket together with the process
 * latch, in bounded slices, with CHECK_FOR_INTERRUPTS() between them.
 *
 * Errors: sb_amqp_connect() raises 08001 when the broker cannot be reached.
 * Publishing never raises; it records the reason in the connection and
 * marks it unusable, so that the caller can still delete what the broker
 * confirmed before deciding what to report.  All librabbitmq status codes
 * and replies become text in one place, describe_reply().
 *
 *-------------------------------------------------------------------------
 */
#include "signalbus.h"

#include <fcntl.h>
#include <netdb.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <linux/sockios.h>
#include <unistd.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "miscadmin.h"
#include "storage/fd.h"
#include "pgstat.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#define SB_CONNECT_TIMEOUT_S	10
#define SB_MAX_HEADER_DEPTH		100
#define SB_WAIT_SLICE_MS		1000
#define SB_FRAME_MAX			131072
#define SB_SEND_TIMEOUT_S		10
#define SB_MAX_IN_FLIGHT		8

struct SbAmqp
{
	amqp_connection_state_t conn;
	amqp_channel_t channel;
	bool		channel_open;
	bool		usable;
	bool		blocked;		/* connection.blocked by a resource alarm */
	uint64		next_tag;		/* delivery tag of the next publish */
	SbPublish  *in_flight[SB_MAX_IN_FLIGHT];	/* bursts awaiting verdicts, oldest first */
	int			nin_flight;
	int			sndbuf;			/* the socket's SO_SNDBUF, when last asked */
	bool		corked;			/* TCP_CORK set: writes held for one segment */
	long		outq_bound;		/* at most this many bytes are unsent */
	char	   *display_url;
	char		error[SB_ERROR_LEN];
};

/*
 * describe_reply: librabbitmq's reply to an RPC as one line of text.
 */
static void
describe_reply(amqp_rpc_reply_t reply, const char *what, char *buf, size_t len)
{
	switch (reply.reply_type)
	{
		case AMQP_RESPONSE_NORMAL:
			snprintf(buf, len, "%s: no error", what);
			break;
		case AMQP_RESPONSE_NONE:
			snprintf(buf, len, "%s: no reply from the broker", what);
			break;
		case AMQP_RESPONSE_LIBRARY_EXCEPTION:
			snprintf(buf, len, "%s: %s", what,
					 amqp_error_string2(reply.library_error));
			break;
		case AMQP_RESPONSE_SERVER_EXCEPTION:
			if (reply.reply.id == AMQP_CONNECTION_CLOSE_METHOD)
			{
				amqp_connection_close_t *m = reply.reply.decoded;

				snprintf(buf, len, "%s: broker closed the connection: %u %.*s",
						 what, m->reply_code, (int) m->reply_text.len,
						 (char *) m->reply_text.bytes);
			}
			else if (reply.reply.id == AMQP_CHANNEL_CLOSE_METHOD)
			{
				amqp_channel_close_t *m = reply.reply.decoded;

				snprintf(buf, len, "%s: broker closed the channel: %u %.*s",
						 what, m->reply_code, (int) m->reply_text.len,
						 (char *) m->reply_text.bytes);
			}
			else
				snprintf(buf, len, "%s: unexpected broker method 0x%08X",
						 what, reply.reply.id);
			break;
	}
}

static void
set_error(SbAmqp *c, const char *fmt,...) pg_attribute_printf(2, 3);

static void
set_error(SbAmqp *c, const char *fmt,...)
{
	va_list		ap;

	va_start(ap, fmt);
	vsnprintf(c->error, sizeof(c->error), fmt, ap);
	va_end(ap);
}

/*
 * sb_amqp_settings_signature: everything a connection is made from, so that
 * the worker reconnects when a reload changes any of it.
 */
char *
sb_amqp_settings_signature(void)
{
	return psprintf("%s|%s|%s|%s|%s|%s|%s|%s|%d|%d",
					signalbus_amqp_url ? signalbus_amqp_url : "",
					signalbus_amqp_password_file ? signalbus_amqp_password_file : "",
					signalbus_tls_ca_file ? signalbus_tls_ca_file : "",
					signalbus_tls_cert_file ? signalbus_tls_cert_file : "",
					signalbus_tls_key_file ? signalbus_tls_key_file : "",
					signalbus_tls_key_password ? signalbus_tls_key_password : "",
					signalbus_tls_key_password_file ? signalbus_tls_key_password_file : "",
					"", (int) signalbus_tls_verify_peer,
					(int) signalbus_tls_verify_hostname);
}

/*
 * sb_amqp_url_is_valid: whether librabbitmq can parse url.  Used by the GUC
 * check hook, so it must not raise errors.
 */
bool
sb_amqp_url_is_valid(const char *url, const char **detail)
{
	struct amqp_connection_info info;
	char	   *copy = strdup(url);
	int			status;

	if (copy == NULL)
		return true;			/* cannot tell; the worker will */
	status = amqp_parse_url(copy, &info);
	free(copy);
	if (status != AMQP_STATUS_OK)
	{
		*detail = "The URL must look like amqp://user:password@host:port/vhost or amqps://...";
		return false;
	}
	return true;
}

/*
 * sb_amqp_display_url: url as amqp://user@host:port/vhost, for status and
 * messages: never the password.
 */
char *
sb_amqp_display_url(const char *url)
{
	struct amqp_connection_info info;
	char	   *copy = pstrdup(url);
	StringInfoData out;
	const char *p;

	if (amqp_parse_url(copy, &info) != AMQP_STATUS_OK)
		return pstrdup("(invalid URL)");
	initStringInfo(&out);
	appendStringInfo(&out, "%s://%s@%s:%d/",
					 info.ssl ? "amqps" : "amqp", info.user, info.host,
					 info.port);
	for (p = info.vhost; *p; p++)
	{
		unsigned char ch = (unsigned char) *p;

		if (isalnum(ch) || ch == '-' || ch == '.' || ch == '_' || ch == '~')
			appendStringInfoChar(&out, ch);
		else
			appendStringInfo(&out, "%%%02x", ch);
	}
	return out.data;
}

static void
destroy(SbAmqp *c)
{
	if (c->conn)
		amqp_destroy_connection(c->conn);
	c->conn = NULL;
	c->usable = false;
	c->nin_flight = 0;
}

/*
 * open_channel: open the next channel and put it in confirm mode.
 */
static bool
open_channel(SbAmqp *c)
{
	amqp_rpc_reply_t reply;

	c->channel++;
	amqp_channel_open(c->conn, c->channel);
	reply = amqp_get_rpc_reply(c->conn);
	if (reply.reply_type != AMQP_RESPONSE_NORMAL)
	{
		describe_reply(reply, "could not open channel", c->error, sizeof(c->error));
		return false;
	}
	amqp_confirm_select(c->conn, c->channel);
	reply = amqp_get_rpc_reply(c->conn);
	if (reply.reply_type != AMQP_RESPONSE_NORMAL)
	{
		describe_reply(reply, "could not enable publisher confirms", c->error,
					   sizeof(c->error));
		return false;
	}
	c->channel_open = true;
	c->next_tag = 1;
	return true;
}

/*
 * connect_failure_reason: librabbitmq's non-blocking connect reports only
 * "a socket error occurred"; try the connection once more, briefly, to say
 * why (connection refused, no route to host, ...).  NULL if it cannot tell.
 */
static const char *
connect_failure_reason(const char *host, int port)
{
	struct addrinfo hints;
	struct addrinfo *res;
	struct addrinfo *ai;
	char		portstr[16];
	int			reason = 0;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	snprintf(portstr, sizeof(portstr), "%d", port);
	if (getaddrinfo(host, portstr, &hints, &res) != 0)
		return "could not resolve host name";
	for (ai = res; ai != NULL; ai = ai->ai_next)
	{
		int			fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
		struct pollfd pfd;
		int			err = 0;
		socklen_t	len = sizeof(err);

		if (fd < 0)
			continue;
		(void) fcntl(fd, F_SETFL, O_NONBLOCK);
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
		{
			close(fd);
			reason = 0;
			break;				/* it works now */
		}
		err = errno;
		if (err == EINPROGRESS)
		{
			pfd.fd = fd;
			pfd.events = POLLOUT;
			if (poll(&pfd, 1, 1000) == 1 &&
				getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0)
				;
			else
				err = ETIMEDOUT;
		}
		close(fd);
		if (err != 0)
			reason = err;
	}
	freeaddrinfo(res);
	return reason != 0 ? strerror(reason) : NULL;
}

static bool
is_set(const char *s)
{
	return s != NULL && s[0] != '\0';
}

static char *read_password_file(SbAmqp *c, const char *guc, const char *path);

/*
 * configure_tls: verification (on unless switched off), the CA file (else
 * the system's CA store), and the client certificate.
 */
static bool
configure_tls(SbAmqp *c, amqp_socket_t *sock)
{
	amqp_ssl_socket_set_verify_peer(sock, signalbus_tls_verify_peer);
	amqp_ssl_socket_set_verify_hostname(sock, signalbus_tls_verify_hostname);
	if (is_set(signalbus_tls_ca_file))
	{
		if (amqp_ssl_socket_set_cacert(sock, signalbus_tls_ca_file) != AMQP_STATUS_OK)
		{
			set_error(c, "could not load CA file \"%s\"", signalbus_tls_ca_file);
			return false;
		}
	}
	else
	{
		SSL_CTX    *ctx = amqp_ssl_socket_get_context(sock);

		if (ctx == NULL || SSL_CTX_set_default_verify_paths(ctx) != 1)
		{
			set_error(c, "could not load the system's CA certificates");
			return false;
		}
	}
	if (is_set(signalbus_tls_cert_file) || is_set(signalbus_tls_key_file))
	{
		if (!is_set(signalbus_tls_cert_file) || !is_set(signalbus_tls_key_file))
		{
			set_error(c, "signalbus.tls_cert_file and signalbus.tls_key_file must be set together");
			return false;
		}
		if (is_set(signalbus_tls_key_password_file))
		{
			char	   *pass = read_password_file(c, "signalbus.tls_key_password_file",
												  signalbus_tls_key_password_file);

			if (pass == NULL)
				return false;
			amqp_ssl_socket_set_key_passwd(sock, pass);
		}
		else if (is_set(signalbus_tls_key_password))
			amqp_ssl_socket_set_key_passwd(sock, signalbus_tls_key_password);
		if (amqp_ssl_socket_set_key(sock, signalbus_tls_cert_file,
									signalbus_tls_key_file) != AMQP_STATUS_OK)
		{
			set_error(c, "could not load client certificate \"%s\" or its key",
					  signalbus_tls_cert_file);
			return false;
		}
	}
	return true;
}

/*
 * read_password_file: the first line of signalbus.amqp_password_file, in
 * the current memory context; NULL (with the reason in c->error) if it
 * cannot be read.
 */
static char *
read_password_file(SbAmqp *c, const char *guc, const char *path)
{
	FILE	   *f = AllocateFile(path, "r");
	char		buf[1024];
	size_t		len;

	if (f == NULL)
	{
		set_error(c, "could not open %s \"%s\": %s", guc, path, strerror(errno));
		return NULL;
	}
	if (fgets(buf, sizeof(buf), f) == NULL)
		buf[0] = '\0';
	FreeFile(f);
	len = strlen(buf);
	while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r'))
		buf[--len] = '\0';
	return pstrdup(buf);
}

/*
 * sb_amqp_connect: connect to the broker at url, open a confirm-mode
 * channel.  Raises 08001 on failure, with the password never shown.
 */
SbAmqp *
sb_amqp_connect(const char *url, const char *connection_name)
{
	struct amqp_connection_info info;
	char	   *copy = MemoryContextStrdup(TopMemoryContext, url);
	SbAmqp	   *c;
	amqp_socket_t *sock;
	struct timeval tv;
	amqp_rpc_reply_t reply;
	amqp_table_entry_t entries[3];
	amqp_table_entry_t capabilities[1];
	amqp_table_t props;
	int			status;
	int			fd;
	int			one = 1;
	char	   *password;

	c = MemoryContextAllocZero(TopMemoryContext, sizeof(SbAmqp));
	c->display_url = MemoryContextStrdup(TopMemoryContext,
										 sb_amqp_display_url(url));
	if (amqp_parse_url(copy, &info) != AMQP_STATUS_OK)
	{
		set_error(c, "invalid broker URL");
		goto fail;
	}

	c->conn = amqp_new_connection();
	if (c->conn == NULL)
	{
		set_error(c, "out of memory");
		goto fail;
	}
	sock = info.ssl ? amqp_ssl_socket_new(c->conn) : amqp_tcp_socket_new(c->conn);
	if (sock == NULL)
	{
		set_error(c, "could not create socket");
		goto fail;
	}
	if (info.ssl && !configure_tls(c, sock))
		goto fail;

	tv.tv_sec = SB_CONNECT_TIMEOUT_S;
	tv.tv_usec = 0;
	amqp_set_handshake_timeout(c->conn, &tv);
	amqp_set_rpc_timeout(c->conn, &tv);
	errno = 0;
	status = amqp_socket_open_noblock(sock, info.host, info.port, &tv);
	if (status != AMQP_STATUS_OK)
	{
		int			save_errno = errno;
		unsigned long sslerr = info.ssl ? ERR_peek_last_error() : 0;

		if (sslerr != 0)
		{
			char		buf[256];

			ERR_error_string_n(sslerr, buf, sizeof(buf));
			set_error(c, "%s: %s", amqp_error_string2(status), buf);
			ERR_clear_error();
		}
		else if (status == AMQP_STATUS_SOCKET_ERROR)
		{
			const char *reason = (save_errno != 0 && save_errno != EINPROGRESS) ?
				strerror(save_errno) : connect_failure_reason(info.host, info.port);

			set_error(c, "%s", reason ? reason : amqp_error_string2(status));
		}
		else
			set_error(c, "%s", amqp_error_string2(status));
		goto fail;
	}
	fd = amqp_get_sockfd(c->conn);
	if (fd >= 0)
	{
		struct timeval sndtimeo = {SB_SEND_TIMEOUT_S, 0};

		/* small frames must not wait for Nagle and delayed ACKs */
		(void) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		(void) setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));

		/*
		 * A broker under a resource alarm stops reading from publishers: a
		 * write must not block this process (and SIGTERM) forever.
		 */
		(void) setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &sndtimeo, sizeof(sndtimeo));
	}

	entries[0].key = amqp_cstring_bytes("connection_name");
	entries[0].value.kind = AMQP_FIELD_KIND_UTF8;
	entries[0].value.value.bytes = amqp_cstring_bytes(connection_name);
	entries[1].key = amqp_cstring_bytes("product");
	entries[1].value.kind = AMQP_FIELD_KIND_UTF8;
	entries[1].value.value.bytes = amqp_cstring_bytes("signalbus");

	/*
	 * RabbitMQ tells of a resource alarm (connection.blocked) only to clients
	 * that say they understand it; librabbitmq merges this with its own.
	 */
	capabilities[0].key = amqp_cstring_bytes("connection.blocked");
	capabilities[0].value.kind = AMQP_FIELD_KIND_BOOLEAN;
	capabilities[0].value.value.boolean = 1;
	entries[2].key = amqp_cstring_bytes("capabilities");
	entries[2].value.kind = AMQP_FIELD_KIND_TABLE;
	entries[2].value.value.table.num_entries = 1;
	entries[2].value.value.table.entries = capabilities;
	props.num_entries = 3;
	props.entries = entries;

	if (is_set(signalbus_amqp_password_file))
	{
		password = read_password_file(c, "signalbus.amqp_password_file",
									  signalbus_amqp_password_file);
		if (password == NULL)
			goto fail;
	}
	else
		password = info.password;
	reply = amqp_login_with_properties(c->conn, info.vhost, 0, SB_FRAME_MAX, 0,
									   &props, AMQP_SASL_METHOD_PLAIN,
									   info.user, password);
	if (reply.reply_type != AMQP_RESPONSE_NORMAL)
	{
		unsigned long sslerr = info.ssl ? ERR_peek_last_error() : 0;

		describe_reply(reply, "login failed", c->error, sizeof(c->error));
		if (sslerr != 0)
		{
			char		buf[256];
			size_t		len = strlen(c->error);

			/* TLS 1.3: the broker refuses a client certificate only now */
			ERR_error_string_n(sslerr, buf, sizeof(buf));
			snprintf(c->error + len, sizeof(c->error) - len, ": %s", buf);
			ERR_clear_error();
		}
		else if (info.ssl)
		{
			size_t		len = strlen(c->error);

			/* the alert's reason is not always left in OpenSSL's queue */
			snprintf(c->error + len, sizeof(c->error) - len, "%s",
					 is_set(signalbus_tls_cert_file) ?
					 " (the broker may have refused the client certificate)" :
					 " (the broker may require a client certificate: see signalbus.tls_cert_file)");
		}
		goto fail;
	}
	if (!open_channel(c))
		goto fail;

	pfree(copy);
	c->usable = true;
	return c;

fail:
	{
		char		msg[SB_ERROR_LEN];
		char	   *display = pstrdup(c->display_url);

		strlcpy(msg, c->error, sizeof(msg));
		destroy(c);
		pfree(c->display_url);
		pfree(c);
		pfree(copy);
		ereport(ERROR,
				(errcode(ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION),
				 errmsg("could not connect to AMQP broker at %s: %s",
						display, msg)));
	}
	return NULL;				/* keep compiler quiet */
}

/*
 * sb_amqp_close: close the connection and free it.  Never raises; the
 * broker is not asked to close politely, so this never blocks either.
 */
void
sb_amqp_close(SbAmqp *c)
{
	if (c == NULL)
		return;
	destroy(c);
	if (c->display_url)
		pfree(c->display_url);
	pfree(c);
}

bool
sb_amqp_usable(SbAmqp *c)
{
	return c != NULL && c->usable;
}

const char *
sb_amqp_last_error(SbAmqp *c)
{
	return c->error;
}

/* ---------------------------------------------------------------------
 * headers: jsonb object -> AMQP field table
 * ---------------------------------------------------------------------
 */
static bool encode_value(JsonbValue *v, amqp_field_value_t *out, int depth,
						 const char **error, Size *size);

/*
 * The headers travel in the content header frame, which cannot be split:
 * with the other properties they must fit in one frame.
 */
#define SB_MAX_HEADERS_SIZE		(SB_FRAME_MAX - 4096)

static amqp_bytes_t
copy_bytes(const char *data, Size len)
{
	amqp_bytes_t b;

	b.len = len;
	b.bytes = palloc(len + 1);
	memcpy(b.bytes, data, len);
	((char *) b.bytes)[len] = '\0';
	return b;
}

static bool
encode_table(JsonbContainer *container, amqp_table_t *table, int depth,
			 const char **error, Size *size)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	int			nitems = JsonContainerSize(container);

	check_stack_depth();
	if (depth > SB_MAX_HEADER_DEPTH)
	{
		*error = "headers are nested deeper than 100 levels";
		return false;
	}
	table->num_entries = 0;
	table->entries = palloc0(sizeof(amqp_table_entry_t) * Max(nitems, 1));
	it = JsonbIteratorInit(container);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok == WJB_KEY)
		{
			if (v.val.string.len > 255)
			{
				*error = "a headers key is longer than 255 bytes";
				return false;
			}
			if (v.val.string.len == 0)
			{
				*error = "a headers key is empty";
				return false;
			}
			table->entries[table->num_entries].key =
				copy_bytes(v.val.string.val, v.val.string.len);
			*size += 1 + v.val.string.len;
		}
		else if (tok == WJB_VALUE)
		{
			if (!encode_value(&v, &table->entries[table->num_entries].value,
							  depth, error, size))
				return false;
			table->num_entries++;
		}
		if (*size > SB_MAX_HEADERS_SIZE)
		{
			*error = "headers are too large for one AMQP frame";
			return false;
		}
	}
	*size += 4;
	return true;
}

static bool
encode_array(JsonbContainer *container, amqp_array_t *array, int depth,
			 const char **error, Size *size)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	int			nitems = JsonContainerSize(container);

	check_stack_depth();
	if (depth > SB_MAX_HEADER_DEPTH)
	{
		*error = "headers are nested deeper than 100 levels";
		return false;
	}
	array->num_entries = 0;
	array->entries = palloc0(sizeof(amqp_field_value_t) * Max(nitems, 1));
	it = JsonbIteratorInit(container);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok == WJB_ELEM)
		{
			if (!encode_value(&v, &array->entries[array->num_entries], depth,
							  error, size))
				return false;
			array->num_entries++;
		}
		if (*size > SB_MAX_HEADERS_SIZE)
		{
			*error = "headers are too large for one AMQP frame";
			return false;
		}
	}
	*size += 4;
	return true;
}

static bool
encode_number(Numeric num, amqp_field_value_t *out, const char **error)
{
	char	   *s = DatumGetCString(DirectFunctionCall1(numeric_out,
														NumericGetDatum(num)));
	const char *p = s;
	bool		integral = true;

	if (*p == '-')
		p++;
	for (; *p; p++)
		if (!isdigit((unsigned char) *p))
			integral = false;
	if (integral)
	{
		char	   *end;
		long long	ll;

		errno = 0;
		ll = strtoll(s, &end, 10);
		if (errno == 0 && *end == '\0')
		{
			out->kind = AMQP_FIELD_KIND_I64;
			out->value.i64 = (int64_t) ll;
			return true;
		}
	}
	out->kind = AMQP_FIELD_KIND_F64;
	out->value.f64 = strtod(s, NULL);
	if (isinf(out->value.f64) || isnan(out->value.f64))
	{
		*error = "a headers number is out of the range of a double";
		return false;
	}
	return true;
}

static bool
encode_value(JsonbValue *v, amqp_field_value_t *out, int depth,
			 const char **error, Size *size)
{
	*size += 1;					/* the kind */
	switch (v->type)
	{
		case jbvNull:
			out->kind = AMQP_FIELD_KIND_VOID;
			return true;
		case jbvBool:
			out->kind = AMQP_FIELD_KIND_BOOLEAN;
			out->value.boolean = v->val.boolean;
			*size += 1;
			return true;
		case jbvString:
			*size += 4 + v->val.string.len;
			if (*size > SB_MAX_HEADERS_SIZE)
			{
				*error = "headers are too large for one AMQP frame";
				return false;
			}
			out->kind = AMQP_FIELD_KIND_UTF8;
			out->value.bytes = copy_bytes(v->val.string.val, v->val.string.len);
			return true;
		case jbvNumeric:
			*size += 8;
			return encode_number(v->val.numeric, out, error);
		case jbvBinary:
			if (JsonContainerIsObject(v->val.binary.data))
			{
				out->kind = AMQP_FIELD_KIND_TABLE;
				return encode_table(v->val.binary.data, &out->value.table,
									depth + 1, error, size);
			}
			out->kind = AMQP_FIELD_KIND_ARRAY;
			return encode_array(v->val.binary.data, &out->value.array,
								depth + 1, error, size);
		default:
			*error = "headers hold a value of an unsupported JSON type";
			return false;
	}
}

/*
 * sb_amqp_encode_headers: turn a jsonb object into an AMQP field table
 * allocated in the current memory context; NULL with *error set when the
 * value cannot be headers.
 */
void *
sb_amqp_encode_headers(Jsonb *jb, const char **error)
{
	amqp_table_t *table;
	Size		size = 0;

	if (!JB_ROOT_IS_OBJECT(jb) || JB_ROOT_IS_SCALAR(jb))
	{
		*error = "headers is not a JSON object";
		return NULL;
	}
	table = palloc(sizeof(amqp_table_t));
	if (!encode_table(&jb->root, table, 1, error, &size))
		return NULL;
	return table;
}

/* ---------------------------------------------------------------------
 * publishing
 * ---------------------------------------------------------------------
 */

/*
 * next_frame: the next frame from the broker, waiting on the socket and the
 * latch until deadline.  Returns an AMQP status; AMQP_STATUS_TIMEOUT at the
 * deadline.
 */
static int
next_frame(SbAmqp *c, TimestampTz deadline, amqp_frame_t *frame)
{
	struct timeval zero = {0, 0};
	int			fd = amqp_get_sockfd(c->conn);

	for (;;)
	{
		long		remaining;
		int			rc;
		int			status;

		CHECK_FOR_INTERRUPTS();
		if (amqp_frames_enqueued(c->conn) || amqp_data_in_buffer(c->conn))
		{
			status = amqp_simple_wait_frame_noblock(c->conn, frame, &zero);
			if (status != AMQP_STATUS_TIMEOUT)
				return status;
		}
		remaining = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);
		if (remaining <= 0)
			return AMQP_STATUS_TIMEOUT;

		rc = WaitLatchOrSocket(MyLatch,
							   WL_LATCH_SET | WL_SOCKET_READABLE | WL_TIMEOUT |
							   WL_EXIT_ON_PM_DEATH,
							   fd, Min(remaining, SB_WAIT_SLICE_MS),
							   PG_WAIT_EXTENSION);
		if (rc & WL_LATCH_SET)
			ResetLatch(MyLatch);
		if (rc & WL_SOCKET_READABLE)
		{
			/* a TLS record may be partly received: allow a short wait */
			struct timeval slice = {0, 10000};

			status = amqp_simple_wait_frame_noblock(c->conn, frame, &slice);
			if (status != AMQP_STATUS_TIMEOUT)
				return status;
		}
	}
}

/*
 * A burst in flight: messages published on the current channel whose
 * verdicts are still coming.  Up to SB_MAX_IN_FLIGHT bursts can be in
 * flight at once (the flush engine publishes the next burst while the
 * broker confirms the last one); the broker's frames are applied to all of
 * them, wherever they are read.
 */
struct SbPublish
{
	SbMessage  *msgs;
	SbOutcome  *outcomes;
	int		   *idx;			/* its valid messages, in order */
	int			nidx;
	int			capacity;
	int		   *by_tag;			/* message index of tag first_tag + k */
	int			npublished;
	uint64		first_tag;
	int			unresolved;
	int			low;			/* every k below is resolved */
	bool		mandatory;
	int			timeout_ms;
	TimestampTz deadline;
	bool		registered;		/* in c->in_flight */
	bool		stopped;		/* publishing failed: publish no more */
	bool		lost;			/* its channel closed before every verdict */
	bool		suspect;		/* ... and the culprit may be one of its own */
};

static void
register_burst(SbAmqp *c, SbPublish *p)
{
	if (c->nin_flight >= SB_MAX_IN_FLIGHT)
		elog(ERROR, "signalbus: too many bursts in flight");
	c->in_flight[c->nin_flight++] = p;
	p->registered = true;
}

static void
unregister_burst(SbAmqp *c, SbPublish *p)
{
	int			i;

	for (i = 0; i < c->nin_flight; i++)
	{
		if (c->in_flight[i] == p)
		{
			memmove(&c->in_flight[i], &c->in_flight[i + 1],
					sizeof(SbPublish *) * (c->nin_flight - i - 1));
			c->nin_flight--;
			break;
		}
	}
	p->registered = false;
}

/*
 * cork, uncork: hold a burst's writes in the kernel while it is written,
 * so that the broker reads it in full segments rather than a packet per
 * message; let them go before waiting for anything.
 */
static void
cork(SbAmqp *c)
{
	int			one = 1;
	int			fd;

	if (c->corked || c->conn == NULL)
		return;
	fd = amqp_get_sockfd(c->conn);
	if (fd >= 0 && setsockopt(fd, IPPROTO_TCP, TCP_CORK, &one, sizeof(one)) == 0)
		c->corked = true;
}

static void
uncork(SbAmqp *c)
{
	int			zero = 0;
	int			fd;

	if (!c->corked)
		return;
	c->corked = false;
	fd = c->conn ? amqp_get_sockfd(c->conn) : -1;
	if (fd >= 0)
		(void) setsockopt(fd, IPPROTO_TCP, TCP_CORK, &zero, sizeof(zero));
}

/*
 * sb_amqp_forget: forget the bursts in flight (their memory is about to go,
 * after an error).  Their verdicts, if they still come, are ignored: they
 * carry delivery tags below those of anything published later.
 */
void
sb_amqp_forget(SbAmqp *c)
{
	if (c != NULL)
	{
		c->nin_flight = 0;
		uncork(c);
	}
}

/*
 * sb_amqp_settled: whether another burst may be published now.  Not while
 * a burst in flight lost its channel: it is published again when finished,
 * and a burst published meanwhile on the same channel would share its fate
 * (and be sent twice) should it hold the culprit again.
 */
bool
sb_amqp_settled(SbAmqp *c)
{
	int			i;

	for (i = 0; i < c->nin_flight; i++)
		if (c->in_flight[i]->lost)
			return false;
	return true;
}

static void
resolve(SbPublish *p, uint64 tag, bool multiple, SbOutcome outcome)
{
	int			k;

	if (p->lost || tag < p->first_tag || p->npublished == 0)
		return;
	if (tag - p->first_tag >= (uint64) p->npublished)
	{
		if (!multiple)
			return;				/* another burst's message */
		k = p->npublished - 1;
	}
	else
		k = (int) (tag - p->first_tag);
	if (multiple)
	{
		int			j;

		for (j = p->low; j <= k; j++)
		{
			int			i = p->by_tag[j];

			if (p->outcomes[i] == SB_PENDING)
			{
				p->outcomes[i] = outcome;
				p->unresolved--;
			}
		}
		p->low = Max(p->low, k + 1);
	}
	else
	{
		int			i = p->by_tag[k];

		if (p->outcomes[i] == SB_PENDING)
		{
			p->outcomes[i] = outcome;
			p->unresolved--;
		}
	}
}

static void
resolve_all(SbAmqp *c, uint64 tag, bool multiple, SbOutcome outcome)
{
	int			i;

	for (i = 0; i < c->nin_flight; i++)
		resolve(c->in_flight[i], tag, multiple, outcome);
}

/*
 * handle_return: a basic.return carries no delivery tag; match it to the
 * earliest pending message with the same exchange, routing key and body
 * (identical messages are interchangeable).  Reads the content frames that
 * follow the method.
 */
static bool
handle_return(SbAmqp *c, amqp_basic_return_t *ret, TimestampTz deadline)
{
	amqp_frame_t frame;
	char	   *exchange = pnstrdup(ret->exchange.bytes, ret->exchange.len);
	char	   *rkey = pnstrdup(ret->routing_key.bytes, ret->routing_key.len);
	char	   *body = NULL;
	uint64		body_size;
	uint64		received = 0;
	int			status;
	int			b;
	int			pass;
	int			matches = 0;

	status = next_frame(c, deadline, &frame);
	if (status != AMQP_STATUS_OK || frame.frame_type != AMQP_FRAME_HEADER)
	{
		set_error(c, "malformed basic.return from broker");
		c->usable = false;
		return false;
	}
	body_size = frame.payload.properties.body_size;
	body = palloc(body_size + 1);
	while (received < body_size)
	{
		status = next_frame(c, deadline, &frame);
		if (status != AMQP_STATUS_OK || frame.frame_type != AMQP_FRAME_BODY ||
			received + frame.payload.body_fragment.len > body_size)
		{
			set_error(c, "malformed basic.return from broker");
			c->usable = false;
			return false;
		}
		memcpy(body + received, frame.payload.body_fragment.bytes,
			   frame.payload.body_fragment.len);
		received += frame.payload.body_fragment.len;
	}

	/*
	 * A return names no delivery tag: count the pending messages it fits.
	 * One: that message was returned.  More than one (identical exchange,
	 * routing key and body, e.g. rows that differ only in headers): which
	 * one is unknowable, so none of them may be deleted on its ack --
	 * SB_AMBIGUOUS fails them all, to be retried (duplicates, never a
	 * loss).
	 */
	for (pass = 0; pass < 2; pass++)
	{
		for (b = 0; b < c->nin_flight; b++)
		{
			SbPublish  *p = c->in_flight[b];
			int			j;

			if (p->lost)
				continue;
			for (j = p->low; j < p->npublished; j++)
			{
				int			i = p->by_tag[j];
				SbMessage  *m = &p->msgs[i];

				if (p->outcomes[i] != SB_PENDING ||
					m->body_len != body_size ||
					strcmp(m->exchange, exchange) != 0 ||
					strcmp(m->routing_key, rkey) != 0 ||
					memcmp(m->body, body, body_size) != 0)
					continue;
				if (pass == 0)
				{
					matches++;
					continue;
				}
				p->outcomes[i] = matches == 1 ? SB_RETURNED : SB_AMBIGUOUS;
				p->unresolved--;
				{
					/* in the burst's memory: it outlives this call's */
					MemoryContext old = MemoryContextSwitchTo(GetMemoryChunkContext(p->msgs));

					m->error = psprintf("returned by the broker: %u %.*s%s",
										ret->reply_code, (int) ret->reply_text.len,
										(char *) ret->reply_text.bytes,
										matches == 1 ? "" :
										" (it or another message with the same exchange, routing key and body)");
					MemoryContextSwitchTo(old);
				}
			}
		}
	}
	pfree(body);
	pfree(exchange);
	pfree(rkey);
	return true;
}

/*
 * channel_closed: the broker closed the channel over a message.  Every
 * burst in flight loses its pending verdicts.  The broker handles a
 * channel's messages in order and stops at the culprit, so the culprit is
 * in the earliest burst still waiting for a verdict; the bursts after it
 * were never routed and can simply be published again.
 */
static void
channel_closed(SbAmqp *c)
{
	bool		found = false;
	int			i;

	c->channel_open = false;
	for (i = 0; i < c->nin_flight; i++)
	{
		SbPublish  *p = c->in_flight[i];

		if (p->lost)
			continue;
		p->lost = true;
		if (!found && p->unresolved > 0)
		{
			p->suspect = true;
			found = true;
		}
	}
}

/*
 * handle_frame: apply one frame from the broker.  Returns false when
 * publishing cannot go on (channel or connection closed, protocol error).
 */
static bool
handle_frame(SbAmqp *c, amqp_frame_t *frame, TimestampTz deadline)
{
	if (frame->frame_type != AMQP_FRAME_METHOD)
		return true;			/* heartbeat or stray content */

	if (frame->channel != 0 && frame->channel != c->channel)
		return true;			/* an old channel's leftovers */

	switch (frame->payload.method.id)
	{
		case AMQP_BASIC_ACK_METHOD:
			{
				amqp_basic_ack_t *m = frame->payload.method.decoded;

				resolve_all(c, m->delivery_tag, m->multiple, SB_ACKED);
				return true;
			}
		case AMQP_BASIC_NACK_METHOD:
			{
				amqp_basic_nack_t *m = frame->payload.method.decoded;

				resolve_all(c, m->delivery_tag, m->multiple, SB_NACKED);
				return true;
			}
		case AMQP_BASIC_RETURN_METHOD:
			return handle_return(c, frame->payload.method.decoded, deadline);
		case AMQP_CHANNEL_CLOSE_METHOD:
			{
				amqp_channel_close_t *m = frame->payload.method.decoded;
				amqp_channel_close_ok_t ok;

				set_error(c, "broker closed the channel: %u %.*s",
						  m->reply_code, (int) m->reply_text.len,
						  (char *) m->reply_text.bytes);
				amqp_send_method(c->conn, frame->channel,
								 AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
				channel_closed(c);
				return false;
			}
		case AMQP_CONNECTION_CLOSE_METHOD:
			{
				amqp_connection_close_t *m = frame->payload.method.decoded;
				amqp_connection_close_ok_t ok;

				set_error(c, "broker closed the connection: %u %.*s",
						  m->reply_code, (int) m->reply_text.len,
						  (char *) m->reply_text.bytes);
				amqp_send_method(c->conn, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
				c->usable = false;
				return false;
			}
		case AMQP_CONNECTION_BLOCKED_METHOD:
			c->blocked = true;
			return true;
		case AMQP_CONNECTION_UNBLOCKED_METHOD:
			c->blocked = false;
			return true;
		default:
			return true;
	}
}

static void
fill_properties(SbMessage *m, amqp_basic_properties_t *p)
{
	static const amqp_flags_t flags[SB_NPROPS] = {
		AMQP_BASIC_CONTENT_TYPE_FLAG,
		AMQP_BASIC_CONTENT_ENCODING_FLAG,
		AMQP_BASIC_CORRELATION_ID_FLAG,
		AMQP_BASIC_REPLY_TO_FLAG,
		AMQP_BASIC_EXPIRATION_FLAG,
		AMQP_BASIC_MESSAGE_ID_FLAG,
		AMQP_BASIC_TYPE_FLAG,
		AMQP_BASIC_USER_ID_FLAG,
		AMQP_BASIC_APP_ID_FLAG
	};
	amqp_bytes_t *fields[SB_NPROPS] = {
		&p->content_type,
		&p->content_encoding,
		&p->correlation_id,
		&p->reply_to,
		&p->expiration,
		&p->message_id,
		&p->type,
		&p->user_id,
		&p->app_id
	};
	int			i;

	memset(p, 0, sizeof(*p));
	for (i = 0; i < SB_NPROPS; i++)
	{
		if (m->props[i] == NULL)
			continue;
		p->_flags |= flags[i];
		*fields[i] = amqp_cstring_bytes(m->props[i]);
	}
	p->_flags |= AMQP_BASIC_DELIVERY_MODE_FLAG;
	p->delivery_mode = (uint8_t) m->delivery_mode;
	if (m->priority >= 0)
	{
		p->_flags |= AMQP_BASIC_PRIORITY_FLAG;
		p->priority = (uint8_t) m->priority;
	}
	if (m->has_timestamp)
	{
		p->_flags |= AMQP_BASIC_TIMESTAMP_FLAG;
		p->timestamp = (uint64_t) m->timestamp;
	}
	if (m->headers)
	{
		p->_flags |= AMQP_BASIC_HEADERS_FLAG;
		p->headers = *(amqp_table_t *) m->headers;
	}
}

/*
 * frame_bytes: an upper bound of the bytes m takes on the wire, or -1 when
 * that is not cheap to know (a headers table).
 */
static long
frame_bytes(const SbMessage *m)
{
	long		n = (long) m->body_len + 128 +
		strlen(m->exchange) + strlen(m->routing_key);
	int			i;

	if (m->headers != NULL)
		return -1;
	for (i = 0; i < SB_NPROPS; i++)
		if (m->props[i] != NULL)
			n += strlen(m->props[i]) + 1;
	/* one body frame per SB_FRAME_MAX bytes, 8 bytes each */
	return n + 8 * ((long) m->body_len / SB_FRAME_MAX + 1);
}

/*
 * drain_ready: apply the frames that have already arrived, without waiting,
 * so that confirms do not pile up while a long burst is written.
 */
static bool
drain_ready(SbAmqp *c, TimestampTz deadline)
{
	struct timeval zero = {0, 0};
	amqp_frame_t frame;

	for (;;)
	{
		int			status = amqp_simple_wait_frame_noblock(c->conn, &frame, &zero);

		if (status == AMQP_STATUS_TIMEOUT)
			return true;
		if (status != AMQP_STATUS_OK)
		{
			set_error(c, "connection to broker lost: %s", amqp_error_string2(status));
			c->usable = false;
			return false;
		}
		if (!handle_frame(c, &frame, deadline))
			return false;
	}
}

/*
 * wait_for_send_space: librabbitmq writes with no time limit (it polls the
 * socket until the broker reads), and a broker under a resource alarm stops
 * reading.  So before a message is handed to it, wait here, in slices that
 * answer interrupts, until the socket's send buffer has room for it (or is
 * empty, for a message larger than the buffer).  False when the deadline
 * passed or the connection failed meanwhile.
 *
 * Asking the kernel costs two system calls; c->outq_bound, an upper bound
 * of the bytes queued in the socket (what was queued when last asked, plus
 * what was written since), saves them while it leaves ample room.
 */
static bool
wait_for_send_space(SbAmqp *c, SbMessage *m, TimestampTz deadline)
{
	int			fd = amqp_get_sockfd(c->conn);
	int			sndbuf = 0;
	socklen_t	len = sizeof(sndbuf);
	long		need = (long) m->body_len + 4096;
	long		bytes = frame_bytes(m);

	if (bytes >= 0 && c->outq_bound + need <= c->sndbuf / 2)
	{
		c->outq_bound += bytes;
		return true;
	}
	if (fd < 0 || getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, &len) != 0)
		return true;			/* cannot tell: let librabbitmq try */
	c->sndbuf = sndbuf;
	for (;;)
	{
		int			queued = 0;
		long		remaining;

		if (ioctl(fd, SIOCOUTQ, &queued) != 0)
		{
			c->outq_bound = LONG_MAX / 2;
			return true;
		}
		/*
		 * SO_SNDBUF counts the kernel's bookkeeping too (it reports twice
		 * the bytes it promises): leave a wide margin.
		 */
		if (queued == 0 || queued + need <= sndbuf / 2)
		{
			c->outq_bound = bytes >= 0 ? queued + bytes : LONG_MAX / 2;
			return true;
		}
		uncork(c);
		remaining = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);
		if (remaining <= 0)
		{
			set_error(c, "timed out writing to the broker%s",
					  c->blocked ? " (the broker blocked the connection: resource alarm)" : "");
			c->usable = false;
			return false;
		}
		(void) WaitLatchOrSocket(MyLatch,
								 WL_LATCH_SET | WL_SOCKET_READABLE | WL_TIMEOUT |
								 WL_EXIT_ON_PM_DEATH,
								 fd, Min(remaining, 10), PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (!drain_ready(c, deadline))
			return false;
	}
}

/*
 * sb_amqp_publish_begin: a burst of up to capacity of msgs, whose messages
 * are given by sb_amqp_publish_add() (and published on the current channel,
 * opened if need be, as they are given, so that the broker works while the
 * next ones are built), and whose verdicts sb_amqp_publish_finish() waits
 * for.  Other bursts may be in flight meanwhile (up to SB_MAX_IN_FLIGHT).
 */
SbPublish *
sb_amqp_publish_begin(SbAmqp *c, SbMessage *msgs, int capacity, bool mandatory,
					  int timeout_ms, SbOutcome *outcomes)
{
	SbPublish  *p = palloc0(sizeof(SbPublish));

	p->msgs = msgs;
	p->outcomes = outcomes;
	p->idx = palloc(sizeof(int) * Max(capacity, 1));
	p->by_tag = palloc(sizeof(int) * Max(capacity, 1));
	p->capacity = capacity;
	p->mandatory = mandatory;
	p->timeout_ms = timeout_ms;
	p->deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);
	if (!c->usable)
		return p;
	if (!c->channel_open && !open_channel(c))
	{
		c->usable = false;
		return p;
	}
	p->first_tag = c->next_tag;
	register_burst(c, p);

	/* a connection.blocked may be waiting: read it before writing more */
	if (!drain_ready(c, p->deadline))
		p->stopped = true;
	return p;
}

/*
 * sb_amqp_publish_add: publish msgs[i] as part of p (unless it has an
 * error: SB_INVALID), applying the broker's frames as they come.  After a
 * failure of the channel or the connection, messages are only recorded
 * (SB_UNKNOWN), for sb_amqp_publish_finish() to deal with.
 */
void
sb_amqp_publish_add(SbAmqp *c, SbPublish *p, int i)
{
	SbMessage  *m = &p->msgs[i];
	amqp_basic_properties_t props;
	amqp_bytes_t body;
	int			status;

	Assert(p->nidx < p->capacity);
	if (m->error)
	{
		p->outcomes[i] = SB_INVALID;
		return;
	}
	p->outcomes[i] = SB_UNKNOWN;
	p->idx[p->nidx++] = i;
	if (!p->registered || p->stopped || p->lost || !c->usable)
		return;

	if (!wait_for_send_space(c, m, p->deadline))
	{
		p->stopped = true;
		return;
	}
	if (c->blocked)
	{
		/* resource alarm: publish nothing more on this connection */
		set_error(c, "the broker blocked the connection (resource alarm)");
		c->usable = false;
		p->stopped = true;
		return;
	}
	if (p->lost)
		return;					/* the channel closed meanwhile */
	cork(c);
	fill_properties(m, &props);
	body.bytes = (void *) m->body;
	body.len = m->body_len;
	status = amqp_basic_publish(c->conn, c->channel,
								amqp_cstring_bytes(m->exchange),
								amqp_cstring_bytes(m->routing_key),
								p->mandatory, 0, &props, body);
	if (status != AMQP_STATUS_OK)
	{
		set_error(c, "could not publish: %s", amqp_error_string2(status));
		c->usable = false;
		p->stopped = true;
		return;
	}
	p->outcomes[i] = SB_PENDING;
	p->by_tag[p->npublished++] = i;
	p->unresolved++;
	c->next_tag++;

	if ((p->npublished % 16) == 0 && !drain_ready(c, p->deadline))
		p->stopped = true;
}

/*
 * await_verdicts: read the broker's frames until each of p's messages has
 * a verdict, the deadline passes, or p's channel or the connection fails.
 * Leaves p's messages without a verdict SB_UNKNOWN.
 */
static void
await_verdicts(SbAmqp *c, SbPublish *p)
{
	int			j;
	TimestampTz wait_until;

	uncork(c);
	/* confirm_timeout counts from here: the database may have kept us */
	wait_until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), p->timeout_ms);
	p->deadline = Max(p->deadline, wait_until);
	while (p->registered && p->unresolved > 0 && !p->lost && c->usable)
	{
		amqp_frame_t frame;
		int			status = next_frame(c, p->deadline, &frame);

		if (status == AMQP_STATUS_TIMEOUT)
		{
			set_error(c, "timed out after %d ms waiting for publisher confirms%s",
					  p->timeout_ms,
					  c->blocked ? " (the broker blocked the connection: resource alarm)" : "");
			c->usable = false;
			break;
		}
		if (status != AMQP_STATUS_OK)
		{
			set_error(c, "connection to broker lost: %s", amqp_error_string2(status));
			c->usable = false;
			break;
		}
		(void) handle_frame(c, &frame, p->deadline);
	}
	if (p->registered)
		unregister_burst(c, p);
	for (j = 0; j < p->npublished; j++)
	{
		int			i = p->by_tag[j];

		if (p->outcomes[i] == SB_PENDING)
			p->outcomes[i] = SB_UNKNOWN;
	}
}

/*
 * publish_again: publish once more, synchronously, those of p's messages
 * that have no verdict, after p's channel closed; singly: one at a time,
 * so that the one that closes a channel again is known (SB_REFUSED).
 * Returns false when the channel closed again (publishing as a group).
 */
static bool
publish_again(SbAmqp *c, SbPublish *p, bool singly)
{
	int		   *idx = palloc(sizeof(int) * Max(p->nidx, 1));
	int			n = 0;
	int			j;

	for (j = 0; j < p->nidx; j++)
		if (p->outcomes[p->idx[j]] == SB_UNKNOWN)
			idx[n++] = p->idx[j];

	if (!singly)
	{
		SbPublish  *q = sb_amqp_publish_begin(c, p->msgs, n, p->mandatory,
											  p->timeout_ms, p->outcomes);

		for (j = 0; j < n; j++)
			sb_amqp_publish_add(c, q, idx[j]);
		await_verdicts(c, q);
		return !q->lost;
	}
	for (j = 0; j < n && c->usable; j++)
	{
		int			i = idx[j];
		int			attempt;

		/*
		 * The message is the culprit when its channel closed while it was
		 * the earliest one waiting (suspect).  Otherwise a message of
		 * another burst still out on that channel closed it: try again,
		 * alone on a new channel now (the close set every burst aside).
		 */
		for (attempt = 0; attempt < 2 && c->usable; attempt++)
		{
			SbPublish  *q = sb_amqp_publish_begin(c, p->msgs, 1, p->mandatory,
												  p->timeout_ms, p->outcomes);

			sb_amqp_publish_add(c, q, i);
			await_verdicts(c, q);
			if (p->outcomes[i] != SB_UNKNOWN || !c->usable || !q->lost)
				break;
			if (q->suspect)
			{
				p->outcomes[i] = SB_REFUSED;
				p->msgs[i].error = pstrdup(c->error);
				break;
			}
		}
	}
	return true;
}

/*
 * sb_amqp_publish_push: let what was published so far go to the broker
 * now, rather than when the burst's verdicts are awaited.
 */
void
sb_amqp_publish_push(SbAmqp *c, SbPublish *p)
{
	uncork(c);
	/* writing the next chunk may have to wait: count from now */
	p->deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), p->timeout_ms);
}

/*
 * sb_amqp_publish_finish: wait for the broker's verdict on each message of
 * p; outcomes[i] (as given to sb_amqp_publish_begin) says what became of
 * msgs[i].  Never raises an error for the broker's sake: a failure makes
 * the connection unusable (see sb_amqp_last_error) and leaves the
 * unconfirmed messages SB_UNKNOWN.
 *
 * When the broker closes the channel over one message (an exchange that
 * does not exist, a user_id that is not the connection's user, a malformed
 * expiration), the messages left without a verdict are published again on
 * a new channel: those of the burst that held the culprit one at a time,
 * so that the one that closes it again is SB_REFUSED and the others go
 * through; those of a later burst (never routed) together.  One bad row
 * never holds back its burst.
 */
void
sb_amqp_publish_finish(SbAmqp *c, SbPublish *p)
{
	int			i;

	await_verdicts(c, p);
	if (c->usable && p->lost)
	{
		char	   *reason = pstrdup(c->error);

		if (p->suspect || !publish_again(c, p, false))
			(void) publish_again(c, p, true);
		strlcpy(c->error, reason, sizeof(c->error));
		pfree(reason);
	}
	for (i = 0; i < p->nidx; i++)
	{
		int			k = p->idx[i];

		if (p->outcomes[k] == SB_NACKED && p->msgs[k].error == NULL)
			p->msgs[k].error = "refused by the broker (basic.nack)";
	}
	if (c->conn != NULL)
		amqp_maybe_release_buffers(c->conn);
}
