/*-------------------------------------------------------------------------
 *
 * trigger.c
 *		The AFTER INSERT row trigger that signalbus_register() installs.
 *
 * It records the new row's identity (relation, ctid) for the commit
 * callback in xact.c and does no I/O: the cost of a signal on the write path
 * is one small append to transaction-lifetime memory.
 *
 *-------------------------------------------------------------------------
 */
#include "signalbus.h"

#include "commands/trigger.h"
#include "executor/tuptable.h"
#include "fmgr.h"
#include "utils/rel.h"

PG_FUNCTION_INFO_V1(signalbus_trigger);

/*
 * signalbus_trigger: record the inserted row so that the worker is woken
 * for it after commit.  The trigger's argument is 'fast' when the table may
 * use the commit-time fast path (autoflush on, no order_by), 'sweep'
 * otherwise; a table of the latter kind is only sent by sweeps and flushes.
 */
Datum
signalbus_trigger(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Trigger    *trigger;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"%s\" was not called by trigger manager",
						"signalbus_trigger")));

	if (!TRIGGER_FIRED_AFTER(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) ||
		!TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"%s\" must be fired AFTER INSERT FOR EACH ROW",
						"signalbus_trigger")));

	trigger = trigdata->tg_trigger;
	if (signalbus_autoflush && sb_shared != NULL &&
		trigger->tgnargs >= 1 && strcmp(trigger->tgargs[0], "fast") == 0)
		sb_xact_record(RelationGetRelid(trigdata->tg_relation),
					   &trigdata->tg_trigslot->tts_tid);

	return PointerGetDatum(NULL);
}
