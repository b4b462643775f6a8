/*-------------------------------------------------------------------------
 *
 * signalbus.h
 *		Declarations shared by the files of the signalbus extension.
 *
 * A row inserted into a registered signal table travels like this:
 *
 *	trigger.c	AFTER INSERT row trigger records (relation, ctid) in
 *				transaction-lifetime memory;
 *	xact.c		at commit, hands the recorded rows to the database's worker
 *				through the bounded queue in shared memory (shmem.c);
 *	worker.c	the background worker (started by launcher.c) pops the
 *				queue and sweeps every table each signalbus.flush_interval;
 *	flush.c		the flush engine: lock rows, build messages (message.c),
 *				publish them and wait for the broker's confirms (amqp.c),
 *				delete the confirmed rows;
 *	register.c	signalbus_register() and the catalog of signal tables.
 *
 * amqp.c is the only file that includes librabbitmq's headers.
 *
 *-------------------------------------------------------------------------
 */
#ifndef SIGNALBUS_H
#define SIGNALBUS_H

#include "postgres.h"

#include "access/htup.h"
#include "access/tupdesc.h"
#include "datatype/timestamp.h"
#include "lib/stringinfo.h"
#include "nodes/pg_list.h"
#include "storage/itemptr.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "utils/jsonb.h"
#include "utils/relcache.h"

#define SIGNALBUS_EXTNAME		"signalbus"
#define SIGNALBUS_TRIGGER_NAME	"signalbus"

/* guc.c */
extern char *signalbus_amqp_url;
extern char *signalbus_databases;
extern bool signalbus_autoflush;
extern int	signalbus_flush_interval;
extern int	signalbus_max_attempts;
extern int	signalbus_confirm_timeout;
extern int	signalbus_queue_size;
extern int	signalbus_max_backoff;
extern char *signalbus_amqp_password_file;
extern char *signalbus_tls_ca_file;
extern char *signalbus_tls_cert_file;
extern char *signalbus_tls_key_file;
extern char *signalbus_tls_key_password;
extern char *signalbus_tls_key_password_file;
extern char *sb_amqp_settings_signature(void);
extern bool signalbus_tls_verify_peer;
extern bool signalbus_tls_verify_hostname;
extern void sb_guc_init(void);

/* ---------------------------------------------------------------------
 * shmem.c: one slot per database named in signalbus.databases, each with
 * its worker's status and its commit queue.
 * ---------------------------------------------------------------------
 */
typedef enum SbWorkerState
{
	SB_STATE_STOPPED = 0,
	SB_STATE_NO_DATABASE,
	SB_STATE_WAITING_EXTENSION,
	SB_STATE_CONNECTING,
	SB_STATE_IDLE,
	SB_STATE_SENDING,
	SB_STATE_BACKOFF
} SbWorkerState;

typedef struct SbQueueEntry
{
	Oid			relid;
	ItemPointerData tid;
} SbQueueEntry;

#define SB_SWEEP_RELIDS		16
#define SB_ERROR_LEN		512
#define SB_BROKER_LEN		256

typedef struct SbSlot
{
	LWLock	   *lock;			/* protects everything below */
	char		dbname[NAMEDATALEN];
	Oid			dboid;			/* set while a worker serves the database */
	pid_t		pid;
	Latch	   *latch;
	SbWorkerState state;
	char		broker[SB_BROKER_LEN];
	uint64		sent;
	uint64		failed;
	uint64		overflows;
	char		last_error[SB_ERROR_LEN];
	TimestampTz last_error_at;
	TimestampTz last_sent_at;
	TimestampTz next_attempt_at;
	uint32		config_generation;	/* bumped by registration changes */
	bool		sweep_all;		/* a sweep of every table is wanted */
	int			nsweep;			/* tables whose rows overflowed the queue */
	Oid			sweep_relids[SB_SWEEP_RELIDS];
	/* ring buffer of queued rows: entries [tail, head) modulo capacity */
	uint64		head;
	uint64		tail;
	SbQueueEntry *entries;
} SbSlot;

typedef struct SbShared
{
	int			nslots;
	int			capacity;		/* entries per slot queue */
	SbSlot		slots[FLEXIBLE_ARRAY_MEMBER];
} SbShared;

extern SbShared *sb_shared;
extern int	sb_nconfigured;
extern char **sb_configured_dbs;

extern void sb_shmem_init(void);
extern SbSlot *sb_slot_for_database(Oid dboid);
extern int	sb_queue_pop(SbSlot *slot, SbQueueEntry *buf, int max);
extern bool sb_queue_is_empty(SbSlot *slot);
extern void sb_slot_set_state(SbSlot *slot, SbWorkerState state);
extern void sb_slot_set_error(SbSlot *slot, const char *error);
extern void sb_slot_count(SbSlot *slot, int64 sent, int64 failed);
extern void sb_slot_mark_sweep(SbSlot *slot, Oid relid);
extern void sb_slot_request_sweep(SbSlot *slot, Oid relid);
extern bool sb_slot_take_sweep(SbSlot *slot, bool *all, Oid *relids, int *nrelids);
extern void sb_require_shmem(void);

/* trigger.c and xact.c: rows recorded by this transaction */
extern void sb_xact_init(void);
extern void sb_xact_record(Oid relid, ItemPointer tid);
extern void sb_xact_config_changed(void);

/* launcher.c, worker.c */
extern void sb_launcher_register(void);
extern PGDLLEXPORT void signalbus_launcher_main(Datum arg);
extern PGDLLEXPORT void signalbus_worker_main(Datum arg);

/* ---------------------------------------------------------------------
 * register.c: the catalog of signal tables
 * ---------------------------------------------------------------------
 */
typedef struct SbSignal
{
	Oid			relid;
	char	   *nspname;
	char	   *relname;
	Oid			owner;
	char	   *exchange;
	char	   *routing_key;	/* never NULL: the table's name by default */
	bool		autoflush;
	char	   *order_by;		/* NULL when unordered */
	int			burst_count;
	bool		mandatory;
} SbSignal;

extern bool sb_extension_info(Oid *nspid, Oid *owner);
extern List *sb_load_signals(Oid only_relid);

/* ---------------------------------------------------------------------
 * message.c: row -> message
 * ---------------------------------------------------------------------
 */
typedef enum SbTextProp
{
	SB_PROP_CONTENT_TYPE = 0,
	SB_PROP_CONTENT_ENCODING,
	SB_PROP_CORRELATION_ID,
	SB_PROP_REPLY_TO,
	SB_PROP_EXPIRATION,
	SB_PROP_MESSAGE_ID,
	SB_PROP_TYPE,
	SB_PROP_USER_ID,
	SB_PROP_APP_ID,
	SB_NPROPS
} SbTextProp;

extern const char *const sb_prop_names[SB_NPROPS];

typedef enum SbBodyKind
{
	SB_BODY_NONE = 0,			/* no body column: the row as JSON */
	SB_BODY_BYTEA,
	SB_BODY_TEXT,
	SB_BODY_JSON
} SbBodyKind;

/*
 * Where each part of a message comes from in the flush query's result:
 * a column number (1-based) of the SPI result, 0 when the table has no such
 * column.
 */
typedef struct SbLayout
{
	SbBodyKind	body_kind;
	int			col_ctid;
	int			col_xmin;
	int			col_body;
	int			col_rowjson;
	int			col_exchange;
	int			col_routing_key;
	int			col_headers;
	int			col_delivery_mode;
	int			col_priority;
	int			col_timestamp;
	int			col_props[SB_NPROPS];
} SbLayout;

typedef struct SbMessage
{
	ItemPointerData tid;
	const char *exchange;
	const char *routing_key;
	const char *body;
	Size		body_len;
	const char *props[SB_NPROPS];	/* NULL: unset */
	int			delivery_mode;
	int			priority;		/* -1: unset */
	bool		has_timestamp;
	int64		timestamp;		/* seconds since the Unix epoch */
	void	   *headers;		/* amqp.c's field table, NULL: none */
	const char *error;			/* set: the row cannot become a message */
} SbMessage;

extern void sb_check_columns(Relation rel, StringInfo select_list,
							 SbLayout *layout);
extern void sb_build_message(SbMessage *msg, const SbSignal *sig,
							 const SbLayout *layout, HeapTuple tuple,
							 TupleDesc tupdesc);

/* ---------------------------------------------------------------------
 * amqp.c: the broker connection
 * ---------------------------------------------------------------------
 */
typedef enum SbOutcome
{
	SB_PENDING = 0,				/* published, not confirmed yet */
	SB_ACKED,					/* confirmed by the broker */
	SB_NACKED,					/* refused by the broker */
	SB_RETURNED,				/* returned unroutable (mandatory) */
	SB_REFUSED,					/* the broker closed the channel over it */
	SB_UNKNOWN,					/* connection lost or timed out */
	SB_INVALID,					/* never published: not a valid message */
	SB_AMBIGUOUS				/* maybe returned: a return fitting several */
} SbOutcome;

typedef struct SbAmqp SbAmqp;
typedef struct SbPublish SbPublish;	/* a burst awaiting the broker's verdicts */

extern SbAmqp *sb_amqp_connect(const char *url, const char *connection_name);
extern void sb_amqp_close(SbAmqp *conn);
extern bool sb_amqp_usable(SbAmqp *conn);
extern const char *sb_amqp_last_error(SbAmqp *conn);
extern SbPublish *sb_amqp_publish_begin(SbAmqp *conn, SbMessage *msgs,
										int capacity, bool mandatory,
										int timeout_ms, SbOutcome *outcomes);
extern void sb_amqp_publish_add(SbAmqp *conn, SbPublish *pub, int i);
extern void sb_amqp_publish_push(SbAmqp *conn, SbPublish *pub);
extern void sb_amqp_publish_finish(SbAmqp *conn, SbPublish *pub);
extern void sb_amqp_forget(SbAmqp *conn);
extern bool sb_amqp_settled(SbAmqp *conn);
extern void *sb_amqp_encode_headers(Jsonb *jb, const char **error);
extern char *sb_amqp_display_url(const char *url);
extern bool sb_amqp_url_is_valid(const char *url, const char **detail);

/* ---------------------------------------------------------------------
 * flush.c: the flush engine
 * ---------------------------------------------------------------------
 */
/* retry.c: rows that failed on their own, in the worker */
typedef struct SbRetry SbRetry;

extern SbRetry *sb_retry_create(void);
extern bool sb_retry_not_yet(SbRetry *r, Oid relid, const ItemPointerData *tid,
							 TimestampTz now);
extern int	sb_retry_failed(SbRetry *r, Oid relid, const ItemPointerData *tid,
							TimestampTz now, TimestampTz *first_failed_at);
extern void sb_retry_forget(SbRetry *r, Oid relid, const ItemPointerData *tid);

typedef struct SbBurst
{
	int			fetched;		/* rows locked and read */
	int			sent;			/* confirmed and deleted */
	int			failed;			/* refused, returned or invalid */
	int			dead;			/* moved to signalbus_dead_letters */
	char		error[SB_ERROR_LEN];	/* the first failure's reason */
	bool		broker_failed;	/* the connection is no longer usable */
	bool		busy;			/* ordered table busy: try at the next sweep */
	ItemPointerData last_tid;	/* highest ctid read (scan mode) */
} SbBurst;

typedef struct SbInFlight SbInFlight;	/* a burst awaiting its verdicts */

extern SbInFlight *sb_burst_start(SbAmqp *conn, const SbSignal *sig,
								  const ItemPointerData *tids, int ntids,
								  const ItemPointerData *after, bool skip_own,
								  SbRetry *retry, SbBurst *result);
extern void sb_burst_finish(SbAmqp *conn, SbInFlight *burst, SbBurst *result);
extern void sb_flush_burst(SbAmqp *conn, const SbSignal *sig,
						   const ItemPointerData *tids, int ntids,
						   const ItemPointerData *after, bool skip_own,
						   SbRetry *retry, SbBurst *result);

#endif							/* SIGNALBUS_H */
