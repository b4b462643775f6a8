/*-------------------------------------------------------------------------
 *
 * message.c
 *		Row -> AMQP message, by convention over configuration: a column
 *		whose name is that of a message part sets that part for its row
 *		(DESIGN.md section 3).
 *
 * sb_check_columns() checks the special columns' types (at registration,
 * and before every burst, since a column can be altered later) and writes
 * the select list of the flush query; sb_build_message() turns one fetched
 * row into an SbMessage, or says why it cannot.
 *
 *-------------------------------------------------------------------------
 */
#include "signalbus.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

#define AMQP_SHORTSTR_MAX 255

const char *const sb_prop_names[SB_NPROPS] = {
	"content_type",
	"content_encoding",
	"correlation_id",
	"reply_to",
	"expiration",
	"message_id",
	"type",
	"user_id",
	"app_id"
};

typedef enum SbColKind
{
	COL_TEXT,					/* text, varchar, char, or a domain over one */
	COL_BODY,
	COL_JSONB,
	COL_INTEGER,				/* smallint or integer */
	COL_TIMESTAMPTZ
} SbColKind;

static bool
is_text_type(Oid base)
{
	return base == TEXTOID || base == VARCHAROID || base == BPCHAROID;
}

static const char *
kind_description(SbColKind kind)
{
	switch (kind)
	{
		case COL_TEXT:
			return "text, varchar or char";
		case COL_BODY:
			return "bytea, text, varchar, char, json or jsonb";
		case COL_JSONB:
			return "jsonb";
		case COL_INTEGER:
			return "smallint or integer";
		case COL_TIMESTAMPTZ:
			return "timestamp with time zone";
	}
	return "?";
}

/*
 * check_column: the attribute number of the column named name (0 when the
 * table has none), after checking its type is of the given kind.
 */
static AttrNumber
check_column(Relation rel, const char *name, SbColKind kind, Oid *basetype)
{
	TupleDesc	desc = RelationGetDescr(rel);
	int			i;

	for (i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		Oid			base;
		bool		ok;

		if (att->attisdropped || strcmp(NameStr(att->attname), name) != 0)
			continue;
		base = getBaseType(att->atttypid);
		switch (kind)
		{
			case COL_TEXT:
				ok = is_text_type(base);
				break;
			case COL_BODY:
				ok = is_text_type(base) || base == BYTEAOID ||
					base == JSONOID || base == JSONBOID;
				break;
			case COL_JSONB:
				ok = base == JSONBOID;
				break;
			case COL_INTEGER:
				ok = base == INT2OID || base == INT4OID;
				break;
			case COL_TIMESTAMPTZ:
				ok = base == TIMESTAMPTZOID;
				break;
			default:
				ok = false;
		}
		if (!ok)
			ereport(ERROR,
					(errcode(ERRCODE_DATATYPE_MISMATCH),
					 errmsg("column \"%s\" of signal table \"%s\" has type %s",
							name, RelationGetRelationName(rel),
							format_type_be(att->atttypid)),
					 errdetail("A column named \"%s\" sets that part of the message and must be of type %s.",
							   name, kind_description(kind))));
		if (basetype)
			*basetype = base;
		return att->attnum;
	}
	return 0;
}

/*
 * add_column: append "sb.<column>[cast]" to the select list and return its
 * position in the result.
 */
static int
add_column(StringInfo sl, int *ncols, const char *name, const char *cast)
{
	appendStringInfo(sl, ", sb.%s%s", quote_identifier(name), cast);
	return ++(*ncols);
}

/*
 * sb_check_columns: check the special columns of rel.  With select_list,
 * also write the flush query's select list (the table aliased "sb") and
 * where each part of the message will be found in its result.
 */
void
sb_check_columns(Relation rel, StringInfo select_list, SbLayout *layout)
{
	AttrNumber	attnums[SB_NPROPS];
	AttrNumber	body,
				exchange,
				routing_key,
				headers,
				delivery_mode,
				priority,
				timestamp;
	Oid			body_type = InvalidOid;
	int			ncols = 0;
	int			i;

	body = check_column(rel, "body", COL_BODY, &body_type);
	exchange = check_column(rel, "exchange", COL_TEXT, NULL);
	routing_key = check_column(rel, "routing_key", COL_TEXT, NULL);
	headers = check_column(rel, "headers", COL_JSONB, NULL);
	delivery_mode = check_column(rel, "delivery_mode", COL_INTEGER, NULL);
	priority = check_column(rel, "priority", COL_INTEGER, NULL);
	timestamp = check_column(rel, "timestamp", COL_TIMESTAMPTZ, NULL);
	for (i = 0; i < SB_NPROPS; i++)
		attnums[i] = check_column(rel, sb_prop_names[i], COL_TEXT, NULL);

	if (select_list == NULL)
		return;

	memset(layout, 0, sizeof(SbLayout));
	appendStringInfoString(select_list, "sb.ctid, sb.xmin");
	ncols = 2;
	layout->col_ctid = 1;
	layout->col_xmin = 2;

	if (body)
	{
		if (body_type == BYTEAOID)
		{
			layout->body_kind = SB_BODY_BYTEA;
			layout->col_body = add_column(select_list, &ncols, "body", "");
		}
		else if (body_type == JSONOID || body_type == JSONBOID)
		{
			layout->body_kind = SB_BODY_JSON;
			layout->col_body = add_column(select_list, &ncols, "body",
										  "::pg_catalog.text");
		}
		else
		{
			layout->body_kind = SB_BODY_TEXT;
			layout->col_body = add_column(select_list, &ncols, "body",
										  "::pg_catalog.text");
		}
		appendStringInfoString(select_list,
							   ", CASE WHEN sb.body IS NULL THEN pg_catalog.to_json(sb.*) END");
	}
	else
	{
		layout->body_kind = SB_BODY_NONE;
		appendStringInfoString(select_list, ", pg_catalog.to_json(sb.*)");
	}
	layout->col_rowjson = ++ncols;

	if (exchange)
		layout->col_exchange = add_column(select_list, &ncols, "exchange",
										  "::pg_catalog.text");
	if (routing_key)
		layout->col_routing_key = add_column(select_list, &ncols, "routing_key",
											 "::pg_catalog.text");
	if (headers)
		layout->col_headers = add_column(select_list, &ncols, "headers",
										 "::pg_catalog.jsonb");
	if (delivery_mode)
		layout->col_delivery_mode = add_column(select_list, &ncols,
											   "delivery_mode",
											   "::pg_catalog.int4");
	if (priority)
		layout->col_priority = add_column(select_list, &ncols, "priority",
										  "::pg_catalog.int4");
	if (timestamp)
		layout->col_timestamp = add_column(select_list, &ncols, "timestamp",
										   "::pg_catalog.timestamptz");
	for (i = 0; i < SB_NPROPS; i++)
		if (attnums[i])
			layout->col_props[i] = add_column(select_list, &ncols,
											  sb_prop_names[i],
											  "::pg_catalog.text");
}

/* the text of a text-typed column of the result, NULL for SQL NULL */
static const char *
get_text(HeapTuple tuple, TupleDesc desc, int col, Size *len)
{
	bool		isnull;
	Datum		d;
	text	   *t;

	if (col == 0)
		return NULL;
	d = heap_getattr(tuple, col, desc, &isnull);
	if (isnull)
		return NULL;
	t = DatumGetTextPP(d);
	if (len)
		*len = VARSIZE_ANY_EXHDR(t);
	return text_to_cstring(t);
}

/*
 * sb_build_message: fill msg from one row of the flush query.  A row that
 * cannot become a message gets msg->error and is left out of the burst.
 */
/*
 * copy_body: the body, copied out of the tuple (which goes with SPI's
 * memory, while the message waits for the broker's verdict).
 */
static const char *
copy_body(const char *data, Size len)
{
	char	   *copy = palloc(len + 1);

	memcpy(copy, data, len);
	copy[len] = '\0';
	return copy;
}

void
sb_build_message(SbMessage *msg, const SbSignal *sig, const SbLayout *layout,
				 HeapTuple tuple, TupleDesc desc)
{
	bool		isnull;
	Datum		d;
	bool		json_body = false;
	int			i;

	memset(msg, 0, sizeof(SbMessage));
	d = heap_getattr(tuple, layout->col_ctid, desc, &isnull);
	ItemPointerCopy((ItemPointer) DatumGetPointer(d), &msg->tid);
	msg->priority = -1;
	msg->delivery_mode = 2;

	/* body: the body column, else the row as JSON */
	msg->body = NULL;
	if (layout->col_body)
	{
		d = heap_getattr(tuple, layout->col_body, desc, &isnull);
		if (!isnull)
		{
			bytea	   *b = DatumGetByteaPP(d);

			msg->body_len = VARSIZE_ANY_EXHDR(b);
			msg->body = copy_body(VARDATA_ANY(b), msg->body_len);
			json_body = (layout->body_kind == SB_BODY_JSON);
		}
	}
	if (msg->body == NULL)
	{
		text	   *t;

		d = heap_getattr(tuple, layout->col_rowjson, desc, &isnull);
		Assert(!isnull);
		t = DatumGetTextPP(d);
		msg->body_len = VARSIZE_ANY_EXHDR(t);
		msg->body = copy_body(VARDATA_ANY(t), msg->body_len);
		json_body = true;
	}

	msg->exchange = get_text(tuple, desc, layout->col_exchange, NULL);
	if (msg->exchange == NULL)
		msg->exchange = sig->exchange;
	msg->routing_key = get_text(tuple, desc, layout->col_routing_key, NULL);
	if (msg->routing_key == NULL)
		msg->routing_key = sig->routing_key;
	if (strlen(msg->exchange) > AMQP_SHORTSTR_MAX)
		msg->error = "exchange is longer than 255 bytes";
	if (strlen(msg->routing_key) > AMQP_SHORTSTR_MAX)
		msg->error = "routing_key is longer than 255 bytes";

	for (i = 0; i < SB_NPROPS; i++)
	{
		msg->props[i] = get_text(tuple, desc, layout->col_props[i], NULL);
		if (msg->props[i] && strlen(msg->props[i]) > AMQP_SHORTSTR_MAX)
			msg->error = psprintf("%s is longer than 255 bytes", sb_prop_names[i]);
	}
	if (msg->props[SB_PROP_CONTENT_TYPE] == NULL && json_body)
		msg->props[SB_PROP_CONTENT_TYPE] = "application/json";

	if (layout->col_delivery_mode)
	{
		d = heap_getattr(tuple, layout->col_delivery_mode, desc, &isnull);
		if (!isnull)
		{
			int32		v = DatumGetInt32(d);

			if (v != 1 && v != 2)
				msg->error = psprintf("delivery_mode %d is neither 1 (transient) nor 2 (persistent)", v);
			else
				msg->delivery_mode = v;
		}
	}
	if (layout->col_priority)
	{
		d = heap_getattr(tuple, layout->col_priority, desc, &isnull);
		if (!isnull)
		{
			int32		v = DatumGetInt32(d);

			if (v < 0 || v > 255)
				msg->error = psprintf("priority %d is out of range 0..255", v);
			else
				msg->priority = v;
		}
	}
	if (layout->col_timestamp)
	{
		d = heap_getattr(tuple, layout->col_timestamp, desc, &isnull);
		if (!isnull)
		{
			TimestampTz ts = DatumGetTimestampTz(d);

			if (TIMESTAMP_NOT_FINITE(ts))
				msg->error = "timestamp is not finite";
			else
			{
				int64		secs;

				/* whole seconds since 1970, truncated towards the past */
				secs = ts / USECS_PER_SEC;
				if (ts % USECS_PER_SEC < 0)
					secs--;
				secs += (int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY;
				if (secs < 0)
					msg->error = "timestamp is before 1970";
				else
				{
					msg->timestamp = secs;
					msg->has_timestamp = true;
				}
			}
		}
	}
	if (layout->col_headers)
	{
		d = heap_getattr(tuple, layout->col_headers, desc, &isnull);
		if (!isnull)
		{
			const char *error = NULL;

			msg->headers = sb_amqp_encode_headers(DatumGetJsonbP(d), &error);
			if (msg->headers == NULL)
				msg->error = error;
		}
	}
}
