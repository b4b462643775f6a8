/* signalbus--0.1.0.sql */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION signalbus" to load this file. \quit

--
-- The catalog of signal tables.  Kept by pg_dump; holds no secrets (the
-- broker's credentials live only in the superuser-only GUC
-- signalbus.amqp_url).  Written only by signalbus_register() and
-- signalbus_unregister(), which check the caller's ownership of the table.
--
CREATE TABLE signalbus_registrations (
    signal      regclass PRIMARY KEY,
    exchange    text     NOT NULL DEFAULT '',
    routing_key text,
    autoflush   boolean  NOT NULL DEFAULT true,
    order_by    text,
    burst_count integer  NOT NULL DEFAULT 1000 CHECK (burst_count > 0),
    mandatory   boolean  NOT NULL DEFAULT false
);
SELECT pg_catalog.pg_extension_config_dump('signalbus_registrations', '');
REVOKE ALL ON signalbus_registrations FROM PUBLIC;
GRANT SELECT ON signalbus_registrations TO PUBLIC;

--
-- Rows that failed on their own signalbus.max_attempts times.
--
CREATE TABLE signalbus_dead_letters (
    id              bigserial PRIMARY KEY,
    signal          regclass    NOT NULL,
    "row"           jsonb       NOT NULL,
    error           text,
    attempts        integer     NOT NULL DEFAULT 0,
    first_failed_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    last_failed_at  timestamptz NOT NULL DEFAULT pg_catalog.now()
);
SELECT pg_catalog.pg_extension_config_dump('signalbus_dead_letters', '');
SELECT pg_catalog.pg_extension_config_dump('signalbus_dead_letters_id_seq', '');
REVOKE ALL ON signalbus_dead_letters FROM PUBLIC;
-- a dead letter holds a signal table's row: whoever may read that table may
-- see it, requeue it or delete it
ALTER TABLE signalbus_dead_letters ENABLE ROW LEVEL SECURITY;
CREATE POLICY signalbus_dead_letters_readers ON signalbus_dead_letters
    USING (pg_catalog.has_table_privilege(signal, 'SELECT'));
GRANT SELECT, DELETE ON signalbus_dead_letters TO PUBLIC;

--
-- Functions
--
CREATE FUNCTION signalbus_trigger()
RETURNS trigger
AS 'MODULE_PATHNAME', 'signalbus_trigger'
LANGUAGE C;

CREATE FUNCTION signalbus_register(signal      regclass,
                                   exchange    text    DEFAULT '',
                                   routing_key text    DEFAULT NULL,
                                   autoflush   boolean DEFAULT true,
                                   order_by    text    DEFAULT NULL,
                                   burst_count integer DEFAULT 1000,
                                   mandatory   boolean DEFAULT false)
RETURNS void
AS 'MODULE_PATHNAME', 'signalbus_register'
LANGUAGE C VOLATILE;

COMMENT ON FUNCTION signalbus_register(regclass, text, text, boolean, text, integer, boolean)
IS 'make a table a signal table: its rows are published after commit, then deleted';

CREATE FUNCTION signalbus_unregister(signal regclass)
RETURNS void
AS 'MODULE_PATHNAME', 'signalbus_unregister'
LANGUAGE C VOLATILE;

COMMENT ON FUNCTION signalbus_unregister(regclass)
IS 'stop publishing a table''s rows; the rows stay in the table';

CREATE FUNCTION signalbus_flush(signal regclass DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'signalbus_flush'
LANGUAGE C VOLATILE;

COMMENT ON FUNCTION signalbus_flush(regclass)
IS 'send the pending signals of one table (NULL: all) from this session; returns how many the broker confirmed';

CREATE FUNCTION signalbus_flushordered(signal regclass DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'signalbus_flushordered'
LANGUAGE C VOLATILE;

COMMENT ON FUNCTION signalbus_flushordered(regclass)
IS 'send the pending signals in order_by order, waiting for locked rows; returns how many the broker confirmed';

CREATE PROCEDURE signalbus_flushmany(signal regclass DEFAULT NULL)
AS 'MODULE_PATHNAME', 'signalbus_flushmany'
LANGUAGE C;

COMMENT ON PROCEDURE signalbus_flushmany(regclass)
IS 'send a huge backlog, committing after every burst';

CREATE FUNCTION signalbus_worker_status(
    OUT database      name,
    OUT pid           integer,
    OUT state         text,
    OUT broker        text,
    OUT sent          bigint,
    OUT failed        bigint,
    OUT overflows     bigint,
    OUT queued        bigint,
    OUT last_error    text,
    OUT last_error_at timestamptz,
    OUT last_sent_at  timestamptz,
    OUT next_attempt_at timestamptz)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'signalbus_worker_status'
LANGUAGE C VOLATILE;

CREATE FUNCTION signalbus_requeue(id bigint)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    d    record;
    cols text;
    n    bigint := 0;
BEGIN
    FOR d IN SELECT dl.id, dl.signal, dl."row"
             FROM @extschema@.signalbus_dead_letters dl
             WHERE dl.id = signalbus_requeue.id
             FOR UPDATE
    LOOP
        SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY a.attnum)
          INTO cols
          FROM pg_catalog.pg_attribute a
         WHERE a.attrelid = d.signal AND a.attnum > 0 AND NOT a.attisdropped
           AND a.attgenerated = '';
        EXECUTE pg_catalog.format(
            'INSERT INTO %s (%s) OVERRIDING SYSTEM VALUE SELECT %s FROM pg_catalog.jsonb_populate_record(NULL::%s, $1)',
            d.signal, cols, cols, d.signal)
          USING d."row";
        DELETE FROM @extschema@.signalbus_dead_letters dl WHERE dl.id = d.id;
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;

COMMENT ON FUNCTION signalbus_requeue(bigint)
IS 'put a dead-lettered row back into its signal table; returns how many rows were requeued';

CREATE FUNCTION signalbus_requeue(signal regclass)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    d record;
    n bigint := 0;
BEGIN
    FOR d IN SELECT dl.id FROM @extschema@.signalbus_dead_letters dl
             WHERE dl.signal = signalbus_requeue.signal ORDER BY dl.id
    LOOP
        n := n + @extschema@.signalbus_requeue(d.id);
    END LOOP;
    RETURN n;
END
$$;

COMMENT ON FUNCTION signalbus_requeue(regclass)
IS 'put every dead-lettered row of a signal table back into it; returns how many';

-- The two overloads above make signalbus_requeue(5) and
-- signalbus_requeue('my_signal') ambiguous; these resolve them.
CREATE FUNCTION signalbus_requeue(id integer)
RETURNS bigint
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$ SELECT @extschema@.signalbus_requeue(id::bigint) $$;

CREATE FUNCTION signalbus_requeue(signal text)
RETURNS bigint
LANGUAGE sql
AS $$ SELECT @extschema@.signalbus_requeue(signal::pg_catalog.regclass) $$;

CREATE FUNCTION signalbus_pending_counts(OUT signal regclass, OUT pending bigint,
                                         OUT oldest_age interval)
RETURNS SETOF record
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r  record;
    ts boolean := pg_catalog.current_setting('track_commit_timestamp')::boolean;
BEGIN
    FOR r IN SELECT s.signal FROM @extschema@.signalbus_registrations s
             JOIN pg_catalog.pg_class c ON c.oid = s.signal
             ORDER BY c.relname, s.signal
    LOOP
        signal := r.signal;
        oldest_age := NULL;
        BEGIN
            IF ts THEN
                -- the age of the oldest pending row: since its commit
                EXECUTE pg_catalog.format(
                    'SELECT pg_catalog.count(*), pg_catalog.now() OPERATOR(pg_catalog.-) '
                    'pg_catalog.min(pg_catalog.pg_xact_commit_timestamp(xmin)) FROM ONLY %s', r.signal)
                   INTO pending, oldest_age;
            ELSE
                EXECUTE pg_catalog.format('SELECT pg_catalog.count(*) FROM ONLY %s', r.signal)
                   INTO pending;
            END IF;
        EXCEPTION WHEN insufficient_privilege THEN
            pending := NULL;    -- a table (or schema) the caller may not read
        END;
        RETURN NEXT;
    END LOOP;
END
$$;

--
-- Views
--
CREATE VIEW signalbus_signals AS
    SELECT signal, exchange, routing_key, autoflush, order_by, burst_count, mandatory
    FROM signalbus_registrations;

CREATE VIEW signalbus_pending AS
    SELECT signal, pending, oldest_age FROM signalbus_pending_counts();

CREATE VIEW signalbus_status AS
    SELECT database, pid, state, broker, sent, failed, overflows, queued,
           last_error, last_error_at, last_sent_at, next_attempt_at
    FROM signalbus_worker_status();

GRANT SELECT ON signalbus_signals, signalbus_pending, signalbus_status TO PUBLIC;

--
-- DROP TABLE of a signal table removes its registration with it.
--
CREATE FUNCTION signalbus_on_sql_drop()
RETURNS event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- dynamic, so that dropping the extension itself does not trip over
    -- its own catalog table
    IF pg_catalog.to_regclass('@extschema@.signalbus_registrations') IS NOT NULL THEN
        EXECUTE 'DELETE FROM @extschema@.signalbus_registrations r
                 USING pg_catalog.pg_event_trigger_dropped_objects() d
                 WHERE d.classid = ''pg_catalog.pg_class''::pg_catalog.regclass
                   AND d.objsubid = 0
                   AND d.objid = r.signal::pg_catalog.oid';
        EXECUTE 'DELETE FROM @extschema@.signalbus_dead_letters l
                 USING pg_catalog.pg_event_trigger_dropped_objects() d
                 WHERE d.classid = ''pg_catalog.pg_class''::pg_catalog.regclass
                   AND d.objsubid = 0
                   AND d.objid = l.signal::pg_catalog.oid';
    END IF;
END
$$;
REVOKE ALL ON FUNCTION signalbus_on_sql_drop() FROM PUBLIC;

CREATE EVENT TRIGGER signalbus_on_sql_drop ON sql_drop
    EXECUTE FUNCTION signalbus_on_sql_drop();
