/*-------------------------------------------------------------------------
 *
 * retry.c
 *		The worker's memory of rows that failed on their own: how often,
 *		since when, and when to try them again.
 *
 * A row fails on its own when it cannot become a message, or when the
 * broker nacks it, returns it (mandatory) or closes the channel over it;
 * a broker outage never counts against a row.  Each failure doubles the
 * row's delay (1 s, 2 s, 4 s, ... up to signalbus.max_backoff); after
 * signalbus.max_attempts failures the flush engine moves the row to
 * signalbus_dead_letters.  Rows are known by (table, ctid): signal rows
 * are not updated in place, and a row that was has a new identity and
 * starts again, which errs on the side of sending.  The memory is the
 * worker's own and starts empty when the worker does.
 *
 *-------------------------------------------------------------------------
 */
#include "signalbus.h"

#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#define SB_RETRY_MAX_ENTRIES	100000

typedef struct SbRetryKey
{
	Oid			relid;
	ItemPointerData tid;
} SbRetryKey;

typedef struct SbRetryEntry
{
	SbRetryKey	key;
	int			attempts;
	TimestampTz first_failed_at;
	TimestampTz next_attempt_at;
} SbRetryEntry;

struct SbRetry
{
	HTAB	   *hash;
};

static HTAB *
create_hash(void)
{
	HASHCTL		ctl;

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(SbRetryKey);
	ctl.entrysize = sizeof(SbRetryEntry);
	ctl.hcxt = TopMemoryContext;
	return hash_create("signalbus retries", 256, &ctl,
					   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
}

SbRetry *
sb_retry_create(void)
{
	SbRetry    *r = MemoryContextAllocZero(TopMemoryContext, sizeof(SbRetry));

	r->hash = create_hash();
	return r;
}

static void
make_key(SbRetryKey *key, Oid relid, const ItemPointerData *tid)
{
	memset(key, 0, sizeof(*key));
	key->relid = relid;
	key->tid = *tid;
}

/*
 * sb_retry_not_yet: whether the row failed before and its delay has not
 * passed yet.
 */
bool
sb_retry_not_yet(SbRetry *r, Oid relid, const ItemPointerData *tid,
				 TimestampTz now)
{
	SbRetryKey	key;
	SbRetryEntry *e;

	if (r == NULL || hash_get_num_entries(r->hash) == 0)
		return false;
	make_key(&key, relid, tid);
	e = hash_search(r->hash, &key, HASH_FIND, NULL);
	return e != NULL && now < e->next_attempt_at;
}

/*
 * sb_retry_failed: count a failure of the row; returns its failures so
 * far, and when the first one was.
 */
int
sb_retry_failed(SbRetry *r, Oid relid, const ItemPointerData *tid,
				TimestampTz now, TimestampTz *first_failed_at)
{
	SbRetryKey	key;
	SbRetryEntry *e;
	bool		found;
	double		delay;

	if (hash_get_num_entries(r->hash) >= SB_RETRY_MAX_ENTRIES)
	{
		/* rows deleted behind our back leave entries: start afresh */
		hash_destroy(r->hash);
		r->hash = create_hash();
	}
	make_key(&key, relid, tid);
	e = hash_search(r->hash, &key, HASH_ENTER, &found);
	if (!found)
	{
		e->attempts = 0;
		e->first_failed_at = now;
	}
	e->attempts++;
	delay = 1000.0 * (1 << Min(e->attempts - 1, 16));
	delay = Min(delay, (double) signalbus_max_backoff);
	e->next_attempt_at = TimestampTzPlusMilliseconds(now, (int64) delay);
	*first_failed_at = e->first_failed_at;
	return e->attempts;
}

/*
 * sb_retry_forget: the row was sent or set aside.
 */
void
sb_retry_forget(SbRetry *r, Oid relid, const ItemPointerData *tid)
{
	SbRetryKey	key;

	if (r == NULL || hash_get_num_entries(r->hash) == 0)
		return;
	make_key(&key, relid, tid);
	(void) hash_search(r->hash, &key, HASH_REMOVE, NULL);
}
