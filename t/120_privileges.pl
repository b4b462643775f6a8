
# The worker never runs a table owner's code as a superuser.  Everything
# the worker and the flush functions do to a signal table (lock, read, build
# the message, delete, dead-letter) runs as the table's owner, in a
# security-restricted operation, with search_path = pg_catalog, pg_temp.
#
# alice, an ordinary role, owns signal tables with a DELETE trigger, an
# index expression, a column default, a row-level security policy and a
# column type whose cast to json (used by to_json/to_jsonb) all try to
# escalate: ALTER ROLE alice SUPERUSER, COPY ... TO PROGRAM, SET ROLE, SET
# SESSION AUTHORIZATION, GRANT, CREATE ROLE ... SUPERUSER, pg_read_file().
# Every attempt is recorded (al.attempts) with who ran it and how it ended;
# each must fail and alice must stay an ordinary role.  alice also plants
# operators and functions in public that would capture an unqualified name
# in the extension's queries; none may ever be called.  Then: row-level
# security on signal tables and on signalbus_dead_letters, and who may
# flush (SELECT and DELETE on the table, 42501 otherwise; no argument:
# only the tables the caller may flush).
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);
use SignalBusTest;

my $QT = '120.t';      # hostile table al.t
my $QR = '120.rls';    # row-level security tables
my $QF = '120.flush';  # who-may-flush tables (database fl)
my $QD = '120.dl';     # the dead-letter table

my $node = new_node(
	'priv',
	databases => 'postgres',
	flush_interval => '300ms',
	'signalbus.max_backoff' => '1s',
	'signalbus.max_attempts' => 1);
$node->start;
declare_queue($_) for $QT, $QR, $QF, $QD;

# run SQL as a role in a database: (stdout, stderr, sqlstate)
sub sql_as
{
	my ($user, $db, $sql) = @_;
	my ($out, $err) = ('', '');
	$node->psql($db, "\\set VERBOSITY verbose\n$sql",
		stdout => \$out, stderr => \$err,
		connstr => $node->connstr($db) . " user=$user");
	my ($state) = $err =~ /ERROR:\s+([0-9A-Z]{5}):/;
	return ($out, $err, $state // '');
}

sub alice_ok
{
	my ($db, $sql, $what) = @_;
	my ($out, $err) = sql_as('alice', $db, $sql);
	die "as alice in $db ($what): $err" if $err =~ /ERROR/;
	return $out;
}

sub bodies
{
	my ($msgs) = @_;
	return join(',', sort map { body_json($_)->{v} } @$msgs);
}

# ---------------------------------------------------------------------------
# roles; alice's hostile objects, in both databases (fl has no worker)
# ---------------------------------------------------------------------------
$node->safe_psql('postgres', q{
	CREATE ROLE alice LOGIN;
	CREATE ROLE bob LOGIN;
	CREATE ROLE carol LOGIN;
	CREATE DATABASE fl;
});

my $hostile = <<'EOSQL';
CREATE TABLE al.attempts (
	n      bigserial PRIMARY KEY,
	tag    text,        -- where the code ran from
	what   text,        -- what it tried
	usr    text,        -- current_user
	sess   text,        -- session_user
	result text,        -- SUCCEEDED, or the error
	sp     text,        -- search_path
	pid    int);
GRANT USAGE ON SCHEMA al TO PUBLIC;
GRANT INSERT ON al.attempts TO PUBLIC;
GRANT USAGE ON SEQUENCE al.attempts_n_seq TO PUBLIC;

CREATE FUNCTION al.record(tag text, what text, result text) RETURNS void
LANGUAGE plpgsql VOLATILE AS $f$
BEGIN
	INSERT INTO al.attempts (tag, what, usr, sess, result, sp, pid)
	VALUES (tag, what, current_user, session_user, result,
			pg_catalog.current_setting('search_path'), pg_catalog.pg_backend_pid());
EXCEPTION WHEN OTHERS THEN
	RAISE WARNING 'sb120 attempt % % as %: % (not recorded: %)',
		tag, what, current_user, result, SQLERRM;
END
$f$;

-- try every escalation; record each outcome; never raise
CREATE FUNCTION al.escalate(tag text) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $f$
DECLARE
	tries text[] := ARRAY[
		'alter role',           'ALTER ROLE alice SUPERUSER',
		'copy to program',      'COPY (SELECT 1) TO PROGRAM ''true''',
		'set role',             'SET ROLE postgres',
		'set session authorization', 'SET SESSION AUTHORIZATION postgres',
		'grant',                'GRANT pg_execute_server_program TO alice',
		'create role',          'CREATE ROLE mallory SUPERUSER LOGIN',
		'read server file',     'SELECT pg_catalog.pg_read_file(''postgresql.conf'')'];
	i int;
	r text;
	u text;
	s text;
BEGIN
	FOR i IN 1 .. pg_catalog.array_length(tries, 1) / 2 LOOP
		BEGIN
			EXECUTE tries[2 * i];
			r := 'SUCCEEDED';
			u := current_user;
			s := session_user;
			-- undo a successful SET ROLE / SESSION AUTHORIZATION (which
			-- would change who runs the rest) by failing
			IF tries[2 * i - 1] LIKE 'set %' THEN
				RAISE EXCEPTION USING ERRCODE = 'SB120', MESSAGE = 'undo';
			END IF;
		EXCEPTION WHEN SQLSTATE 'SB120' THEN
			NULL;
		WHEN OTHERS THEN
			r := SQLSTATE || ': ' || SQLERRM;
		END;
		PERFORM al.record(tag, tries[2 * i - 1],
			r || CASE WHEN u IS NOT NULL THEN ' (as ' || u || '/' || s || ')' ELSE '' END);
		u := NULL;
	END LOOP;
	-- not an escalation: a probe of whether this runs in a
	-- security-restricted operation (which refuses temporary tables)
	BEGIN
		CREATE TEMP TABLE sb120_probe (i int);
		DROP TABLE pg_temp.sb120_probe;
		r := 'NOT RESTRICTED (created a temporary table)';
	EXCEPTION WHEN OTHERS THEN
		r := CASE WHEN SQLERRM LIKE '%security-restricted operation%' THEN 'restricted'
				  ELSE 'NOT RESTRICTED? ' || SQLSTATE || ': ' || SQLERRM END;
	END;
	PERFORM al.record(tag, 'restricted probe', r);
	RETURN true;
END
$f$;

-- a planted object reports that it was called, then tries to escalate
CREATE FUNCTION al.capture(what text) RETURNS void
LANGUAGE plpgsql VOLATILE AS $f$
BEGIN
	RAISE WARNING 'sb120 capture: % called as % (session %)', what, current_user, session_user;
	PERFORM al.escalate('capture ' || what);
END
$f$;

CREATE FUNCTION al.trg() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
	PERFORM al.escalate('delete trigger');
	RETURN OLD;
END
$f$;

CREATE FUNCTION al.idx(v text) RETURNS text LANGUAGE plpgsql IMMUTABLE AS $f$
BEGIN
	PERFORM al.escalate('index expression');
	RETURN v;
END
$f$;

CREATE FUNCTION al.dflt() RETURNS text LANGUAGE plpgsql AS $f$
BEGIN
	PERFORM al.escalate('default');
	RETURN 'default';
END
$f$;

CREATE FUNCTION al.pol(id bigint) RETURNS boolean LANGUAGE plpgsql AS $f$
BEGIN
	PERFORM al.escalate('policy');
	RETURN id % 2 = 0;
END
$f$;

-- a type whose cast to json runs alice's code wherever a row is turned
-- into JSON (to_json for the message body, to_jsonb for a dead letter)
CREATE TYPE al.mood AS ENUM ('calm', 'angry');
CREATE FUNCTION al.mood_json(al.mood) RETURNS json LANGUAGE plpgsql AS $f$
BEGIN
	PERFORM al.escalate('cast to json');
	RETURN pg_catalog.to_json($1::text);
END
$f$;
CREATE CAST (al.mood AS json) WITH FUNCTION al.mood_json(al.mood);

CREATE TABLE al.t (
	id   bigserial PRIMARY KEY,
	v    text,
	d    text DEFAULT al.dflt(),
	mood al.mood DEFAULT 'calm');
CREATE INDEX ON al.t (al.idx(v));
CREATE TRIGGER t_del BEFORE DELETE ON al.t FOR EACH ROW EXECUTE FUNCTION al.trg();
EOSQL

for my $db (qw(postgres fl))
{
	$node->safe_psql($db, q{
		CREATE EXTENSION signalbus;
		CREATE SCHEMA al AUTHORIZATION alice;
		GRANT CREATE ON SCHEMA public TO alice;  -- as in databases from before PostgreSQL 15
	});
	alice_ok($db, $hostile, 'hostile objects');
	alice_ok($db, "SELECT signalbus_register('al.t', routing_key => '$QT')", 'register');
}

# all attempts so far (db, condition) -> rows "tag|what|usr|result"
sub attempts
{
	my ($db, $cond) = @_;
	return $node->safe_psql($db,
		"SELECT coalesce(string_agg(tag || ' | ' || what || ' | ' || usr || ' | ' || result || ' | ' || sp, E'\\n' ORDER BY n), '') "
		  . "FROM al.attempts WHERE $cond");
}

sub count_attempts
{
	my ($db, $cond) = @_;
	return $node->safe_psql($db, "SELECT count(*) FROM al.attempts WHERE $cond");
}

# ---------------------------------------------------------------------------
# 1. the worker sends alice's hostile table
# ---------------------------------------------------------------------------
alice_ok('postgres', q{INSERT INTO al.t (v) VALUES ('w1'), ('w2'), ('w3')}, 'insert');
is(bodies(get_messages($QT, count => 3, timeout => 30)), 'w1,w2,w3',
	'worker: the hostile table is sent');
ok(wait_for_sql($node, 'SELECT count(*) FROM al.t', '0'), 'worker: hostile table drained');

for my $tag ('delete trigger', 'cast to json')
{
	cmp_ok(count_attempts('postgres', "tag = '$tag'"), '>', 0, "worker: alice's $tag ran");
	is(attempts('postgres', "tag = '$tag' AND usr <> 'alice'"), '',
		"worker: alice's $tag ran as alice, never as another role");
	is(attempts('postgres', "tag = '$tag' AND result LIKE 'SUCCEEDED%'"), '',
		"worker: every escalation from alice's $tag failed");
	is(attempts('postgres', "tag = '$tag' AND sp <> 'pg_catalog, pg_temp'"), '',
		"worker: alice's $tag ran with search_path = pg_catalog, pg_temp");
	cmp_ok(count_attempts('postgres', "tag = '$tag' AND what = 'restricted probe'"), '>', 0,
		"worker: alice's $tag probed for a security-restricted operation");
	is(attempts('postgres', "tag = '$tag' AND what = 'restricted probe' AND result <> 'restricted'"),
		'', "worker: alice's $tag ran in a security-restricted operation");
}
is(attempts('postgres', "result LIKE 'SUCCEEDED%'"), '',
	'no escalation succeeded (index expression and default ran as alice at insert)');

# ---------------------------------------------------------------------------
# 2. flushes in a backend (database fl, no worker): by a superuser, by bob
#    (SELECT and DELETE granted), and the procedure; all as the owner
# ---------------------------------------------------------------------------
$node->safe_psql('fl', q{GRANT SELECT, DELETE ON al.t TO bob});
my @calls = (
	[ 'postgres', q{SELECT signalbus_flush('al.t')} ],
	[ 'postgres', q{SELECT signalbus_flush()} ],
	[ 'postgres', q{SELECT signalbus_flushordered('al.t')} ],
	[ 'postgres', q{CALL signalbus_flushmany('al.t')} ],
	[ 'bob', q{SELECT signalbus_flush('al.t')} ],
	[ 'bob', q{SELECT signalbus_flushordered()} ],
	[ 'bob', q{CALL signalbus_flushmany()} ]);
my $k = 0;
for my $c (@calls)
{
	my ($user, $call) = @$c;
	$k++;
	alice_ok('fl', "INSERT INTO al.t (v) VALUES ('f$k')", 'insert');
	$node->safe_psql('fl', 'TRUNCATE al.attempts');
	my ($out, $err, $state) = sql_as($user, 'fl', $call);
	is($state, '', "$call as $user succeeds") or diag($err);
	is(bodies(get_messages($QT, count => 1, timeout => 10)), "f$k", "$call as $user: sent");
	is($node->safe_psql('fl', 'SELECT count(*) FROM al.t'), '0', "$call as $user: drained");
	cmp_ok(count_attempts('fl', "tag = 'delete trigger'"), '>', 0,
		"$call as $user: alice's delete trigger ran");
	is(attempts('fl', "usr <> 'alice' OR result LIKE 'SUCCEEDED%' OR sp <> 'pg_catalog, pg_temp'"),
		'',
		"$call as $user: alice's code ran as alice, with the safe search_path, and every escalation failed"
	);
	is(attempts('fl', "what = 'restricted probe' AND result <> 'restricted'"),
		'', "$call as $user: in a security-restricted operation");
}

# ---------------------------------------------------------------------------
# 3. objects planted in public to capture an unqualified name
# ---------------------------------------------------------------------------
my @ops = (
	[ '=', 'oid', 'regclass' ], [ '=', 'regclass', 'oid' ],
	[ '=', 'oid', 'integer' ], [ '=', 'integer', 'oid' ],
	[ '=', 'oid', 'bigint' ], [ '=', 'oid', 'oid' ],
	[ '=', 'regclass', 'regclass' ], [ '=', 'name', 'name' ],
	[ '=', 'name', 'text' ], [ '=', 'text', 'text' ],
	[ '=', 'integer', 'integer' ], [ '=', 'bigint', 'bigint' ],
	[ '=', 'tid', 'tid' ], [ '>', 'tid', 'tid' ], [ '<', 'tid', 'tid' ],
	[ '=', 'xid', 'xid' ]);
my $plant = '';
my $i = 0;
for my $op (@ops)
{
	my ($o, $l, $r) = @$op;
	$i++;
	my $cmp =
	    $l eq $r ? "\$1 OPERATOR(pg_catalog.$o) \$2"
	  : ($l =~ /oid|regclass/ && $r =~ /oid|regclass|integer|bigint/)
	  || ($r =~ /oid|regclass/ && $l =~ /integer|bigint/)
	  ? "\$1::pg_catalog.oid OPERATOR(pg_catalog.$o) \$2::pg_catalog.oid"
	  : "\$1::pg_catalog.text OPERATOR(pg_catalog.$o) \$2::pg_catalog.text";
	$cmp = "\$1::pg_catalog.text::pg_catalog.xid OPERATOR(pg_catalog.=) \$2" if $l eq 'xid';
	$plant .= qq{
		CREATE FUNCTION public.sb120_op$i($l, $r) RETURNS boolean LANGUAGE plpgsql AS \$f\$
		BEGIN PERFORM al.capture('operator $o($l, $r)'); RETURN $cmp; END \$f\$;
		CREATE OPERATOR public.$o (LEFTARG = $l, RIGHTARG = $r, FUNCTION = public.sb120_op$i);
	};
}
$plant .= q{
	CREATE FUNCTION public.to_json(al.t) RETURNS json LANGUAGE plpgsql AS $f$
	BEGIN PERFORM al.capture('to_json(al.t)'); RETURN pg_catalog.to_json($1); END $f$;
	CREATE FUNCTION public.to_jsonb(al.t) RETURNS jsonb LANGUAGE plpgsql AS $f$
	BEGIN PERFORM al.capture('to_jsonb(al.t)'); RETURN pg_catalog.to_jsonb($1); END $f$;
	CREATE FUNCTION public.jsonb_populate_record(al.t, jsonb) RETURNS al.t LANGUAGE plpgsql AS $f$
	BEGIN PERFORM al.capture('jsonb_populate_record(al.t, jsonb)'); RETURN pg_catalog.jsonb_populate_record($1, $2); END $f$;
	CREATE FUNCTION public.now() RETURNS timestamptz LANGUAGE plpgsql AS $f$
	BEGIN PERFORM al.capture('now()'); RETURN pg_catalog.now(); END $f$;
	CREATE FUNCTION public.quote_ident(text) RETURNS text LANGUAGE plpgsql AS $f$
	BEGIN PERFORM al.capture('quote_ident(text)'); RETURN pg_catalog.quote_ident($1); END $f$;
	CREATE FUNCTION public.quote_ident(name) RETURNS text LANGUAGE plpgsql AS $f$
	BEGIN PERFORM al.capture('quote_ident(name)'); RETURN pg_catalog.quote_ident($1); END $f$;
	CREATE FUNCTION public.format(text, regclass) RETURNS text LANGUAGE plpgsql AS $f$
	BEGIN PERFORM al.capture('format(text, regclass)'); RETURN pg_catalog.format($1, $2); END $f$;
	CREATE FUNCTION public.has_table_privilege(regclass, text) RETURNS boolean LANGUAGE plpgsql AS $f$
	BEGIN PERFORM al.capture('has_table_privilege(regclass, text)'); RETURN pg_catalog.has_table_privilege($1::pg_catalog.oid, $2); END $f$;
	CREATE FUNCTION public.to_regclass(text) RETURNS regclass LANGUAGE plpgsql AS $f$
	BEGIN PERFORM al.capture('to_regclass(text)'); RETURN pg_catalog.to_regclass($1); END $f$;
	CREATE FUNCTION public.count(al.t) RETURNS bigint LANGUAGE plpgsql AS $f$
	BEGIN PERFORM al.capture('count(al.t)'); RETURN 1; END $f$;
};
for my $db (qw(postgres fl))
{
	alice_ok($db, $plant, 'plant');
	$node->safe_psql($db, 'TRUNCATE al.attempts');
	alice_ok($db, q{
		CREATE TABLE al.t2 (id bigserial PRIMARY KEY, v text);
		CREATE TABLE al.gone (id bigserial PRIMARY KEY, v text);
		SELECT signalbus_register('al.gone', routing_key => '120.t');
	}, 'more tables');
}
# positive control: the plant does capture an unqualified comparison of an
# oid with a regclass (here in alice's own query, as alice)
alice_ok('fl', q{SELECT count(*) FROM pg_catalog.pg_class c JOIN signalbus_registrations r ON c.oid = r.signal},
	'control');
cmp_ok(count_attempts('fl', "tag = 'capture operator =(oid, regclass)' AND usr = 'alice'"), '>', 0,
	'capture: control: a planted operator captures an unqualified oid = regclass');
$node->safe_psql('fl', 'TRUNCATE al.attempts');
my $log_offset = -s $node->logfile;

# everything the extension does, with default and with hostile paths
alice_ok('postgres', q{INSERT INTO al.t (v) VALUES ('c1'), ('c2')}, 'insert');
is(bodies(get_messages($QT, count => 2, timeout => 30)), 'c1,c2', 'capture: worker still sends');
ok(wait_for_sql($node, 'SELECT count(*) FROM al.t', '0'), 'capture: drained');
alice_ok('fl', q{INSERT INTO al.t (v) VALUES ('c3')}, 'insert');
my @capture_calls = (
	[ 'postgres', 'fl', q{SELECT signalbus_flush()} ],
	[ 'postgres', 'fl', q{SELECT signalbus_flush('al.t')} ],
	[ 'postgres', 'fl', q{SELECT signalbus_flushordered('al.t')} ],
	[ 'postgres', 'fl', q{CALL signalbus_flushmany()} ],
	[ 'postgres', 'fl', q{SELECT count(*) FROM signalbus_pending} ],
	[ 'postgres', 'fl', q{SELECT count(*) FROM signalbus_signals} ],
	[ 'postgres', 'postgres', q{SELECT count(*) FROM signalbus_status} ],
	[ 'postgres', 'fl', q{SELECT signalbus_register('al.t2', routing_key => '120.t')} ],
	[ 'postgres', 'fl', q{SELECT signalbus_unregister('al.t2')} ],
	[ 'postgres', 'fl', q{SELECT signalbus_requeue('al.t')} ],
	[ 'alice', 'fl', q{SELECT signalbus_register('al.t2', routing_key => '120.t')} ],
	[ 'alice', 'fl', q{SELECT signalbus_flush('al.t2')} ],
	[ 'alice', 'fl', q{SELECT signalbus_flush()} ],
	[ 'alice', 'fl', q{SELECT count(*) FROM signalbus_pending} ],
	[ 'alice', 'fl', q{SELECT signalbus_unregister('al.t2')} ],
	[ 'alice', 'fl', q{DROP TABLE al.gone} ],
	[ 'alice', 'postgres', q{DROP TABLE al.gone} ]);
for my $path ('"$user", public', 'public, pg_catalog')
{
	for my $c (@capture_calls)
	{
		my ($user, $db, $call) = @$c;
		next if $call =~ /DROP TABLE/ && $path ne 'public, pg_catalog';
		my ($out, $err, $state) = sql_as($user, $db, "SET search_path = $path;\n$call");
		is($state, '', "capture: $call as $user in $db with search_path $path runs")
		  or diag($err);
	}
}
# let the worker sweep (and reload its catalog) a few times
sleep 1.5;
for my $db (qw(postgres fl))
{
	is(attempts($db, "tag LIKE 'capture%'"), '',
		"capture: no object planted in public was ever called ($db)");
}
my @captured = grep { /sb120 capture/ } split /\n/, slurp_file($node->logfile, $log_offset);
is(scalar @captured, 0, 'capture: the log shows no call of a planted object')
  or diag(join("\n", @captured[ 0 .. ($#captured < 9 ? $#captured : 9) ]));

# ---------------------------------------------------------------------------
# 4. row-level security on signal tables (worker, database postgres).
#    The worker acts as the owner: a policy the owner bypasses (ENABLE)
#    hides nothing from it; a policy forced on the owner (FORCE) applies:
#    the rows it hides are neither sent nor deleted nor dead-lettered.
# ---------------------------------------------------------------------------
alice_ok('postgres', qq{
	CREATE TABLE al.r1 (id bigint PRIMARY KEY, v text);
	ALTER TABLE al.r1 ENABLE ROW LEVEL SECURITY;
	CREATE POLICY nobody ON al.r1 USING (false);
	CREATE TABLE al.r2 (id bigint PRIMARY KEY, v text);
	ALTER TABLE al.r2 ENABLE ROW LEVEL SECURITY;
	ALTER TABLE al.r2 FORCE ROW LEVEL SECURITY;
	CREATE POLICY evens ON al.r2 USING (al.pol(id)) WITH CHECK (true);
	SELECT signalbus_register('al.r1', routing_key => '$QR');
	SELECT signalbus_register('al.r2', routing_key => '$QR');
}, 'rls tables');
$node->safe_psql('postgres', 'TRUNCATE al.attempts');
alice_ok('postgres', q{
	INSERT INTO al.r1 VALUES (1, 'r1-1'), (2, 'r1-2');
	INSERT INTO al.r2 VALUES (1, 'r2-1'), (2, 'r2-2'), (3, 'r2-3'), (4, 'r2-4');
}, 'rls rows');
is(bodies(get_messages($QR, count => 4, timeout => 30)), 'r1-1,r1-2,r2-2,r2-4',
	'RLS: the owner bypasses an enabled policy (all sent); a forced policy hides rows from the worker');
ok(wait_for_sql($node, 'SELECT count(*) FROM al.r1', '0'), 'RLS: al.r1 drained');
ok(wait_for_sql($node, q{SELECT string_agg(id::text, ',' ORDER BY id) FROM al.r2}, '1,3'),
	'RLS: rows hidden from the owner by a forced policy stay in the table');
sleep 1;    # a few more sweeps: still not sent, not dead-lettered
is(queue_length($QR), 0, 'RLS: hidden rows are not sent later either');
is($node->safe_psql('postgres', q{SELECT count(*) FROM signalbus_dead_letters WHERE signal::text = 'al.r2'}),
	'0', 'RLS: hidden rows are not dead-lettered');
cmp_ok(count_attempts('postgres', "tag = 'policy'"), '>', 0, 'RLS: the forced policy ran in the worker');
is(attempts('postgres', "tag = 'policy' AND (usr <> 'alice' OR result LIKE 'SUCCEEDED%' OR sp <> 'pg_catalog, pg_temp' OR (what = 'restricted probe' AND result <> 'restricted'))"),
	'', 'RLS: the policy ran as alice, restricted, with the safe search_path');
is($node->safe_psql('postgres', q{SELECT pending FROM signalbus_pending WHERE signal::text = 'al.r2'}),
	'2', 'RLS: signalbus_pending (as a superuser) counts the hidden rows');
$node->safe_psql('postgres', q{ALTER TABLE al.r2 NO FORCE ROW LEVEL SECURITY});
is(bodies(get_messages($QR, count => 2, timeout => 30)), 'r2-1,r2-3',
	'RLS: once the policy no longer applies to the owner, the rows are sent');

# ---------------------------------------------------------------------------
# 5. who may flush (database fl, no worker): SELECT and DELETE, else 42501
# ---------------------------------------------------------------------------
alice_ok('fl', qq{
	CREATE TABLE al.f_sd (id bigserial PRIMARY KEY, v text);
	CREATE TABLE al.f_s  (id bigserial PRIMARY KEY, v text);
	CREATE TABLE al.f_d  (id bigserial PRIMARY KEY, v text);
	CREATE TABLE al.f_0  (id bigserial PRIMARY KEY, v text);
	SELECT signalbus_register('al.f_sd', routing_key => '$QF');
	SELECT signalbus_register('al.f_s', routing_key => '$QF');
	SELECT signalbus_register('al.f_d', routing_key => '$QF');
	SELECT signalbus_register('al.f_0', routing_key => '$QF');
	GRANT SELECT, DELETE ON al.f_sd TO bob;
	GRANT SELECT ON al.f_s TO bob;
	GRANT DELETE ON al.f_d TO bob;
}, 'flush tables');

sub fill
{
	alice_ok('fl', join('', map { "INSERT INTO al.$_ (v) VALUES ('$_-a'), ('$_-b');" } qw(f_sd f_s f_d f_0)),
		'fill');
	return;
}

sub counts
{
	return $node->safe_psql('fl',
		q{SELECT (SELECT count(*) FROM al.f_sd) || ',' || (SELECT count(*) FROM al.f_s) || ','
		  || (SELECT count(*) FROM al.f_d) || ',' || (SELECT count(*) FROM al.f_0)});
}
fill();
for my $t (qw(f_s f_d f_0))
{
	for my $call ("SELECT signalbus_flush('al.$t')", "SELECT signalbus_flushordered('al.$t')",
		"CALL signalbus_flushmany('al.$t')")
	{
		my ($out, $err, $state) = sql_as('bob', 'fl', $call);
		is($state, '42501', "bob: $call fails with 42501") or diag($err);
	}
}
is(counts(), '2,2,2,2', 'refused flushes changed nothing');
is(queue_length($QF), 0, 'refused flushes sent nothing');
{
	my ($out, $err, $state) = sql_as('bob', 'fl', q{SELECT signalbus_flush('al.f_sd')});
	is($out, '2', 'bob: signalbus_flush of a table with SELECT and DELETE sends it') or diag($err);
	is(bodies(get_messages($QF, count => 2, timeout => 10)), 'f_sd-a,f_sd-b', 'bob: its rows arrived');
}
for my $call (q{SELECT signalbus_flush()}, q{SELECT signalbus_flushordered()},
	q{CALL signalbus_flushmany()})
{
	$node->safe_psql('fl', 'DELETE FROM al.f_sd; DELETE FROM al.f_s; DELETE FROM al.f_d; DELETE FROM al.f_0;');
	fill();
	my ($out, $err, $state) = sql_as('bob', 'fl', $call);
	is($state, '', "bob: $call succeeds") or diag($err);
	is($out, '2', "bob: $call returns 2") if $call =~ /SELECT/;
	is(counts(), '0,2,2,2', "bob: $call flushes only the table bob may flush");
	is(bodies(get_messages($QF, count => 2, timeout => 10)), 'f_sd-a,f_sd-b',
		"bob: $call sent only that table's rows");
	is(queue_length($QF), 0, "bob: $call sent nothing else");
}
{
	my ($out, $err, $state) = sql_as('alice', 'fl', q{SELECT signalbus_flush()});
	is($out, '6', 'alice (the owner) flushes all her tables');
	is(counts(), '0,0,0,0', 'alice: all drained');
	is(scalar @{ get_messages($QF, count => 6, timeout => 10) }, 6, 'alice: 6 messages');
	for my $call (q{SELECT signalbus_register('al.f_sd')}, q{SELECT signalbus_unregister('al.f_sd')})
	{
		($out, $err, $state) = sql_as('bob', 'fl', $call);
		is($state, '42501', "bob: $call fails with 42501 (not the owner)");
	}
}

# ---------------------------------------------------------------------------
# 6. dead letters: the row is copied as the owner too, and readable only by
#    whoever may SELECT its table (last: a failure here makes alice a
#    superuser)
# ---------------------------------------------------------------------------
alice_ok('postgres', qq{
	CREATE TABLE al.dl (id bigserial PRIMARY KEY, v text, priority int, mood al.mood DEFAULT 'angry');
	SELECT signalbus_register('al.dl', routing_key => '$QD');
	GRANT SELECT ON al.dl TO carol;
}, 'dead letter table');
$node->safe_psql('postgres', 'TRUNCATE al.attempts');
alice_ok('postgres', q{INSERT INTO al.dl (v, priority) VALUES ('poison', 999), ('fine', 1)}, 'poison');
is(bodies(get_messages($QD, count => 1, timeout => 30)), 'fine', 'dead letter: the good row is sent');
ok(wait_for_sql($node, q{SELECT count(*) FROM signalbus_dead_letters WHERE signal::text = 'al.dl'}, '1', 20),
	'dead letter: the poison row is dead-lettered (max_attempts = 1)');
is($node->safe_psql('postgres', 'SELECT count(*) FROM al.dl'), '0', 'dead letter: the poison row left its table');
is(attempts('postgres', "usr <> 'alice' OR result LIKE 'SUCCEEDED%'"), '',
	"dead letter: alice's cast to json ran as alice only, and failed to escalate (to_jsonb of the dead letter included)");
is(attempts('postgres', "sp <> 'pg_catalog, pg_temp' OR (what = 'restricted probe' AND result <> 'restricted')"), '',
	'dead letter: in a security-restricted operation with the safe search_path');
is((sql_as('alice', 'postgres', 'SELECT count(*) FROM signalbus_dead_letters'))[0], '1',
	'dead letters: the owner sees it');
is((sql_as('carol', 'postgres', 'SELECT count(*) FROM signalbus_dead_letters'))[0], '1',
	'dead letters: a role with SELECT on the table sees it');
is((sql_as('bob', 'postgres', 'SELECT count(*) FROM signalbus_dead_letters'))[0], '0',
	'dead letters: a role without SELECT on the table does not');
is((sql_as('bob', 'postgres', 'DELETE FROM signalbus_dead_letters RETURNING id'))[0], '',
	'dead letters: ... nor may delete it');

# ---------------------------------------------------------------------------
# the end: alice is still an ordinary role
# ---------------------------------------------------------------------------
is( $node->safe_psql(
		'postgres',
		q{SELECT rolsuper || ',' || rolcreaterole || ',' || rolbypassrls FROM pg_roles WHERE rolname = 'alice'}),
	'false,false,false', 'alice is still not a superuser (nor CREATEROLE, nor BYPASSRLS)');
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_roles WHERE rolname = 'mallory'}),
	'0', 'no role mallory was created');
is( $node->safe_psql(
		'postgres',
		q{SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member WHERE r.rolname = 'alice'}
	),
	'0', 'alice was granted no role');
for my $db (qw(postgres fl))
{
	is(attempts($db, "result LIKE 'SUCCEEDED%'"), '', "no escalation ever succeeded ($db)");
	is(attempts($db, "tag LIKE 'capture%'"), '', "no planted object was ever called ($db)");
}
unlike(slurp_file($node->logfile), qr/terminated by signal/, 'no server process crashed');

$node->stop;
done_testing();
