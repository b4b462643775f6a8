/*-------------------------------------------------------------------------
 *
 * register.c
 *		signalbus_register(), signalbus_unregister() and the catalog of
 *		signal tables (the extension's signalbus_registrations table).
 *
 * Registration is checked against the caller (ownership, primary key,
 * special columns, order_by), then written as the extension's owner, who
 * alone may write the catalog.
 *
 *-------------------------------------------------------------------------
 */
#include "signalbus.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/indexing.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_type.h"
#include "catalog/dependency.h"
#include "commands/extension.h"
#include "utils/guc.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "parser/scansup.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/syscache.h"

#define SB_MAX_BURST	100000
#define AMQP_SHORTSTR_MAX 255

/*
 * sb_extension_info: the schema and owner of the signalbus extension in the
 * current database; false when it is not created here.
 */
bool
sb_extension_info(Oid *nspid, Oid *owner)
{
	Relation	rel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;
	bool		found = false;

	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber,
				F_NAMEEQ, CStringGetDatum(SIGNALBUS_EXTNAME));
	scan = systable_beginscan(rel, ExtensionNameIndexId, true, NULL, 1, &key);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
	{
		Form_pg_extension ext = (Form_pg_extension) GETSTRUCT(tup);

		if (nspid)
			*nspid = ext->extnamespace;
		if (owner)
			*owner = ext->extowner;
		found = true;
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return found;
}

static const char *
ext_schema_quoted(Oid *owner)
{
	Oid			nspid;

	if (!sb_extension_info(&nspid, owner))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension \"%s\" is not installed in this database",
						SIGNALBUS_EXTNAME)));
	return quote_identifier(get_namespace_name(nspid));
}

/*
 * safe_search_path: run what follows with search_path = pg_catalog,
 * pg_temp, so that no operator or function a user planted in a schema of
 * theirs is picked up while we hold another role's privileges.  Returns the
 * GUC nest level to pass to AtEOXact_GUC().
 */
static int
safe_search_path(void)
{
	int			nestlevel = NewGUCNestLevel();

	(void) set_config_option("search_path", "pg_catalog, pg_temp",
							 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true,
							 0, false);
	return nestlevel;
}

/*
 * sb_load_signals: the registered signal tables (only_relid: just that one)
 * as a List of SbSignal, allocated in the caller's memory context.  Tables
 * that no longer exist are left out.
 */
List *
sb_load_signals(Oid only_relid)
{
	MemoryContext callercxt = CurrentMemoryContext;
	List	   *result = NIL;
	StringInfoData sql;
	Oid			argtypes[1] = {OIDOID};
	Datum		args[1];
	uint64		i;
	int			ret;
	int			nestlevel;

	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "SELECT c.oid, n.nspname, c.relname, c.relowner, r.exchange, "
					 "r.routing_key, r.autoflush, r.order_by, r.burst_count, r.mandatory "
					 "FROM %s.signalbus_registrations r "
					 "JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) r.signal "
					 "JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace "
					 "WHERE $1 OPERATOR(pg_catalog.=) 0 OR c.oid OPERATOR(pg_catalog.=) $1 "
					 "ORDER BY c.oid",
					 ext_schema_quoted(NULL));
	args[0] = ObjectIdGetDatum(only_relid);

	nestlevel = safe_search_path();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	ret = SPI_execute_with_args(sql.data, 1, argtypes, args, NULL, true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read signalbus_registrations: %s",
			 SPI_result_code_string(ret));

	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		MemoryContext old;
		SbSignal   *sig;
		bool		isnull;
		char	   *rk;
		char	   *ob;

		old = MemoryContextSwitchTo(callercxt);
		sig = palloc0(sizeof(SbSignal));
		sig->relid = DatumGetObjectId(SPI_getbinval(tup, desc, 1, &isnull));
		sig->nspname = SPI_getvalue(tup, desc, 2);
		sig->relname = SPI_getvalue(tup, desc, 3);
		sig->owner = DatumGetObjectId(SPI_getbinval(tup, desc, 4, &isnull));
		sig->exchange = SPI_getvalue(tup, desc, 5);
		rk = SPI_getvalue(tup, desc, 6);
		sig->routing_key = rk ? rk : pstrdup(sig->relname);
		sig->autoflush = DatumGetBool(SPI_getbinval(tup, desc, 7, &isnull));
		ob = SPI_getvalue(tup, desc, 8);
		sig->order_by = ob;
		sig->burst_count = DatumGetInt32(SPI_getbinval(tup, desc, 9, &isnull));
		sig->mandatory = DatumGetBool(SPI_getbinval(tup, desc, 10, &isnull));
		if (sig->exchange == NULL)
			sig->exchange = pstrdup("");
		result = lappend(result, sig);
		MemoryContextSwitchTo(old);
	}
	SPI_finish();
	AtEOXact_GUC(false, nestlevel);
	return result;
}

/*
 * open_signal_table: check that signal names an existing ordinary table the
 * caller owns, and lock it as CREATE TRIGGER does.
 */
static Relation
open_signal_table(Oid relid, LOCKMODE lockmode)
{
	Relation	rel;

	if (!OidIsValid(relid) ||
		!SearchSysCacheExists1(RELOID, ObjectIdGetDatum(relid)))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation with OID %u does not exist", relid)));

	rel = table_open(relid, lockmode);
	if (rel->rd_rel->relkind != RELKIND_RELATION)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("\"%s\" is not a table", RelationGetRelationName(rel)),
				 errdetail("Only ordinary tables can be signal tables.")));
	if (OidIsValid(getExtensionOfObject(RelationRelationId, relid)) &&
		getExtensionOfObject(RelationRelationId, relid) ==
		get_extension_oid(SIGNALBUS_EXTNAME, true))
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("\"%s\" belongs to the signalbus extension and cannot be a signal table",
						RelationGetRelationName(rel))));
	if (rel->rd_rel->relpersistence == RELPERSISTENCE_TEMP)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("cannot register temporary table \"%s\"",
						RelationGetRelationName(rel)),
				 errdetail("The signalbus worker cannot see another session's temporary tables.")));
	if (!pg_class_ownercheck(relid, GetUserId()))
		aclcheck_error(ACLCHECK_NOT_OWNER, OBJECT_TABLE,
					   RelationGetRelationName(rel));
	return rel;
}

/*
 * normalize_order_by: parse a comma-separated list of the table's own
 * columns, each optionally followed by ASC or DESC and NULLS FIRST or
 * NULLS LAST, and return it with every column name quoted.  Anything else
 * (expressions, unknown columns, a second statement) is refused.
 */
static char *
normalize_order_by(Relation rel, const char *input)
{
	StringInfoData out;
	const char *p = input;
	int			nitems = 0;

	initStringInfo(&out);
	for (;;)
	{
		char	   *colname;
		AttrNumber	attnum;
		char		word[16];
		bool		seen_dir;
		bool		seen_nulls;

		while (scanner_isspace(*p))
			p++;
		if (*p == '"')
		{
			StringInfoData id;

			initStringInfo(&id);
			p++;
			for (;;)
			{
				if (*p == '\0')
					ereport(ERROR,
							(errcode(ERRCODE_SYNTAX_ERROR),
							 errmsg("unterminated quoted identifier in order_by \"%s\"",
									input)));
				if (*p == '"')
				{
					if (p[1] == '"')
						p++;
					else
						break;
				}
				appendStringInfoChar(&id, *p++);
			}
			p++;
			colname = id.data;
		}
		else if (isalpha((unsigned char) *p) || *p == '_' || IS_HIGHBIT_SET(*p))
		{
			const char *start = p;

			while (isalnum((unsigned char) *p) || *p == '_' || *p == '$' ||
				   IS_HIGHBIT_SET(*p))
				p++;
			colname = downcase_identifier(start, p - start, false, false);
		}
		else
			ereport(ERROR,
					(errcode(ERRCODE_SYNTAX_ERROR),
					 errmsg("invalid order_by \"%s\"", input),
					 errdetail("order_by must be a comma-separated list of the table's columns, each optionally followed by ASC or DESC and NULLS FIRST or NULLS LAST.")));

		attnum = get_attnum(RelationGetRelid(rel), colname);
		if (attnum <= 0)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_COLUMN),
					 errmsg("column \"%s\" of relation \"%s\" does not exist",
							colname, RelationGetRelationName(rel)),
					 errdetail("order_by names columns of the signal table.")));
		if (nitems++ > 0)
			appendStringInfoString(&out, ", ");
		appendStringInfoString(&out, quote_identifier(colname));

		/* optional ASC/DESC, then optional NULLS FIRST/LAST */
		seen_dir = false;
		seen_nulls = false;
		for (;;)
		{
			const char *start;
			int			len;

			while (scanner_isspace(*p))
				p++;
			start = p;
			while (isalpha((unsigned char) *p))
				p++;
			len = p - start;
			if (len == 0)
				break;
			if (len >= (int) sizeof(word))
				len = sizeof(word) - 1;
			memcpy(word, start, len);
			word[len] = '\0';
			if ((pg_strcasecmp(word, "asc") == 0 || pg_strcasecmp(word, "desc") == 0) &&
				(seen_dir || seen_nulls))
				ereport(ERROR,
						(errcode(ERRCODE_SYNTAX_ERROR),
						 errmsg("invalid order_by \"%s\"", input),
						 errdetail("ASC or DESC must come once, before NULLS FIRST or NULLS LAST.")));
			if (pg_strcasecmp(word, "nulls") == 0 && seen_nulls)
				ereport(ERROR,
						(errcode(ERRCODE_SYNTAX_ERROR),
						 errmsg("invalid order_by \"%s\"", input),
						 errdetail("NULLS FIRST or NULLS LAST must come once.")));
			if (pg_strcasecmp(word, "asc") == 0)
			{
				appendStringInfoString(&out, " ASC");
				seen_dir = true;
			}
			else if (pg_strcasecmp(word, "desc") == 0)
			{
				appendStringInfoString(&out, " DESC");
				seen_dir = true;
			}
			else if (pg_strcasecmp(word, "nulls") == 0)
			{
				const char *s2;

				seen_nulls = true;
				while (scanner_isspace(*p))
					p++;
				s2 = p;
				while (isalpha((unsigned char) *p))
					p++;
				if (p - s2 == 5 && pg_strncasecmp(s2, "first", 5) == 0)
					appendStringInfoString(&out, " NULLS FIRST");
				else if (p - s2 == 4 && pg_strncasecmp(s2, "last", 4) == 0)
					appendStringInfoString(&out, " NULLS LAST");
				else
					ereport(ERROR,
							(errcode(ERRCODE_SYNTAX_ERROR),
							 errmsg("invalid order_by \"%s\"", input),
							 errdetail("NULLS must be followed by FIRST or LAST.")));
			}
			else
				ereport(ERROR,
						(errcode(ERRCODE_SYNTAX_ERROR),
						 errmsg("invalid order_by \"%s\"", input),
						 errdetail("Unexpected word \"%.*s\".", (int) (p - start), start)));
		}
		if (*p == ',')
		{
			p++;
			continue;
		}
		if (*p == '\0')
			break;
		ereport(ERROR,
				(errcode(ERRCODE_SYNTAX_ERROR),
				 errmsg("invalid order_by \"%s\"", input),
				 errdetail("order_by must be a comma-separated list of the table's columns, each optionally followed by ASC or DESC and NULLS FIRST or NULLS LAST.")));
	}
	return out.data;
}

static void
check_shortstr(const char *what, const char *value)
{
	if (value && strlen(value) > AMQP_SHORTSTR_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s is too long", what),
				 errdetail("AMQP allows at most %d bytes.", AMQP_SHORTSTR_MAX)));
}

static void
spi_exec(const char *sql, int nargs, Oid *argtypes, Datum *args,
		 const char *nulls, int expected)
{
	int			ret = SPI_execute_with_args(sql, nargs, argtypes, args, nulls,
											false, 0);

	if (ret != expected)
		elog(ERROR, "signalbus: \"%s\" failed: %s", sql,
			 SPI_result_code_string(ret));
}

/*
 * signalbus_register: make a table a signal table, or update its options.
 */
PG_FUNCTION_INFO_V1(signalbus_register);
Datum
signalbus_register(PG_FUNCTION_ARGS)
{
	Oid			relid;
	char	   *exchange;
	char	   *routing_key;
	bool		autoflush;
	char	   *order_by = NULL;
	int32		burst_count;
	bool		mandatory;
	Relation	rel;
	Oid			extowner;
	Oid			save_userid;
	int			save_sec;
	const char *schema;
	char	   *qualname;
	StringInfoData sql;
	Oid			argtypes[7] = {OIDOID, TEXTOID, TEXTOID, BOOLOID, TEXTOID, INT4OID, BOOLOID};
	Datum		args[7];
	char		nulls[7] = "       ";
	bool		fast;
	int			nestlevel;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("signal table must not be null")));
	if (PG_ARGISNULL(1) || PG_ARGISNULL(3) || PG_ARGISNULL(5) || PG_ARGISNULL(6))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("exchange, autoflush, burst_count and mandatory must not be null")));

	relid = PG_GETARG_OID(0);
	exchange = text_to_cstring(PG_GETARG_TEXT_PP(1));
	routing_key = PG_ARGISNULL(2) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(2));
	autoflush = PG_GETARG_BOOL(3);
	burst_count = PG_GETARG_INT32(5);
	mandatory = PG_GETARG_BOOL(6);

	check_shortstr("exchange name", exchange);
	check_shortstr("routing key", routing_key);
	if (burst_count < 1 || burst_count > SB_MAX_BURST)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("burst_count must be between 1 and %d", SB_MAX_BURST)));

	rel = open_signal_table(relid, ShareRowExclusiveLock);
	if (!OidIsValid(RelationGetPrimaryKeyIndex(rel)))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TABLE_DEFINITION),
				 errmsg("table \"%s\" has no primary key",
						RelationGetRelationName(rel)),
				 errhint("A signal table needs a primary key.")));
	sb_check_columns(rel, NULL, NULL);
	if (!PG_ARGISNULL(4))
		order_by = normalize_order_by(rel, text_to_cstring(PG_GETARG_TEXT_PP(4)));
	qualname = quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
										  RelationGetRelationName(rel));
	table_close(rel, NoLock);

	schema = ext_schema_quoted(&extowner);
	fast = autoflush && order_by == NULL;

	GetUserIdAndSecContext(&save_userid, &save_sec);
	SetUserIdAndSecContext(extowner, save_sec | SECURITY_LOCAL_USERID_CHANGE);
	nestlevel = safe_search_path();

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");

	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "INSERT INTO %s.signalbus_registrations AS r "
					 "(signal, exchange, routing_key, autoflush, order_by, burst_count, mandatory) "
					 "VALUES ($1::pg_catalog.oid::pg_catalog.regclass, $2, $3, $4, $5, $6, $7) "
					 "ON CONFLICT (signal) DO UPDATE SET exchange = EXCLUDED.exchange, "
					 "routing_key = EXCLUDED.routing_key, autoflush = EXCLUDED.autoflush, "
					 "order_by = EXCLUDED.order_by, burst_count = EXCLUDED.burst_count, "
					 "mandatory = EXCLUDED.mandatory",
					 schema);
	args[0] = ObjectIdGetDatum(relid);
	args[1] = CStringGetTextDatum(exchange);
	if (routing_key)
		args[2] = CStringGetTextDatum(routing_key);
	else
		nulls[2] = 'n';
	args[3] = BoolGetDatum(autoflush);
	if (order_by)
		args[4] = CStringGetTextDatum(order_by);
	else
		nulls[4] = 'n';
	args[5] = Int32GetDatum(burst_count);
	args[6] = BoolGetDatum(mandatory);
	spi_exec(sql.data, 7, argtypes, args, nulls, SPI_OK_INSERT);

	/* (re)create the trigger, whose argument carries the fast-path choice */
	resetStringInfo(&sql);
	appendStringInfo(&sql,
					 "SELECT 1 FROM pg_catalog.pg_trigger WHERE tgrelid OPERATOR(pg_catalog.=) $1 AND tgname OPERATOR(pg_catalog.=) '%s'",
					 SIGNALBUS_TRIGGER_NAME);
	spi_exec(sql.data, 1, argtypes, args, NULL, SPI_OK_SELECT);
	if (SPI_processed > 0)
	{
		resetStringInfo(&sql);
		appendStringInfo(&sql, "DROP TRIGGER %s ON %s",
						 quote_identifier(SIGNALBUS_TRIGGER_NAME), qualname);
		spi_exec(sql.data, 0, NULL, NULL, NULL, SPI_OK_UTILITY);
	}
	resetStringInfo(&sql);
	appendStringInfo(&sql,
					 "CREATE TRIGGER %s AFTER INSERT ON %s FOR EACH ROW "
					 "EXECUTE FUNCTION %s.signalbus_trigger('%s')",
					 quote_identifier(SIGNALBUS_TRIGGER_NAME), qualname, schema,
					 fast ? "fast" : "sweep");
	spi_exec(sql.data, 0, NULL, NULL, NULL, SPI_OK_UTILITY);

	SPI_finish();
	AtEOXact_GUC(false, nestlevel);
	SetUserIdAndSecContext(save_userid, save_sec);

	sb_xact_config_changed();
	PG_RETURN_VOID();
}

/*
 * signalbus_unregister: remove a table's trigger and registration; its rows
 * stay where they are.
 */
PG_FUNCTION_INFO_V1(signalbus_unregister);
Datum
signalbus_unregister(PG_FUNCTION_ARGS)
{
	Oid			relid;
	Relation	rel;
	Oid			extowner;
	Oid			save_userid;
	int			save_sec;
	char	   *qualname;
	char	   *relname;
	const char *schema;
	StringInfoData sql;
	Oid			argtypes[1] = {OIDOID};
	Datum		args[1];
	bool		had_trigger;
	bool		had_registration;
	int			nestlevel;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("signal table must not be null")));
	relid = PG_GETARG_OID(0);
	rel = open_signal_table(relid, ShareRowExclusiveLock);
	relname = pstrdup(RelationGetRelationName(rel));
	qualname = quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
										  relname);
	table_close(rel, NoLock);

	schema = ext_schema_quoted(&extowner);

	GetUserIdAndSecContext(&save_userid, &save_sec);
	SetUserIdAndSecContext(extowner, save_sec | SECURITY_LOCAL_USERID_CHANGE);
	nestlevel = safe_search_path();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");

	args[0] = ObjectIdGetDatum(relid);
	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "DELETE FROM %s.signalbus_registrations WHERE signal OPERATOR(pg_catalog.=) $1::pg_catalog.oid::pg_catalog.regclass",
					 schema);
	spi_exec(sql.data, 1, argtypes, args, NULL, SPI_OK_DELETE);
	had_registration = SPI_processed > 0;

	resetStringInfo(&sql);
	appendStringInfo(&sql,
					 "SELECT 1 FROM pg_catalog.pg_trigger WHERE tgrelid OPERATOR(pg_catalog.=) $1 AND tgname OPERATOR(pg_catalog.=) '%s'",
					 SIGNALBUS_TRIGGER_NAME);
	spi_exec(sql.data, 1, argtypes, args, NULL, SPI_OK_SELECT);
	had_trigger = SPI_processed > 0;
	if (had_trigger)
	{
		resetStringInfo(&sql);
		appendStringInfo(&sql, "DROP TRIGGER %s ON %s",
						 quote_identifier(SIGNALBUS_TRIGGER_NAME), qualname);
		spi_exec(sql.data, 0, NULL, NULL, NULL, SPI_OK_UTILITY);
	}
	SPI_finish();
	AtEOXact_GUC(false, nestlevel);
	SetUserIdAndSecContext(save_userid, save_sec);

	if (!had_registration && !had_trigger)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("table \"%s\" is not a signal table", relname)));

	sb_xact_config_changed();
	PG_RETURN_VOID();
}
