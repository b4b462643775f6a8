/*-------------------------------------------------------------------------
 *
 * signalbus.c
 *		Entry point of the signalbus extension: the transactional outbox,
 *		inside PostgreSQL, publishing to an AMQP broker.
 *
 * _PG_init only calls one init function per concern.  Loaded through
 * shared_preload_libraries, the library also reserves shared memory and
 * starts the launcher; loaded any other way, signalbus_register() and
 * signalbus_flush() still work, and commits queue nothing.
 *
 *-------------------------------------------------------------------------
 */
#include "signalbus.h"

#include "fmgr.h"
#include "miscadmin.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

void
_PG_init(void)
{
	sb_guc_init();
	sb_xact_init();

	if (!process_shared_preload_libraries_in_progress)
		return;

	sb_shmem_init();
	sb_launcher_register();
}
