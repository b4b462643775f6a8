# 010_commit_path.pl -- the commit-time fast path.
#
# signalbus.flush_interval is 1h here, so the periodic sweep never runs
# during the test: whatever reaches the broker was sent because a commit
# handed its rows to the worker.  Checked: a 1,000-row transaction, ROLLBACK,
# savepoints (rolled back, released, nested) and PL/pgSQL exception blocks,
# COPY and multi-row INSERT, two signal tables in one transaction, and the
# two ways to keep a commit off the fast path (signalbus.autoflush = off in
# a session, a table registered with autoflush => false), whose rows are
# then sent by signalbus_flush().
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep);
use SignalBusTest;

my $Q = 'q010_main';
my $QA = 'q010_a';
my $QB = 'q010_b';
my $QM = 'q010_manual';
declare_queue($_) for ($Q, $QA, $QB, $QM);

my $node = new_node('commit010', flush_interval => '1h');
$node->start;

$node->safe_psql('postgres', qq{
	CREATE EXTENSION signalbus;
	CREATE TABLE s010 (id bigserial PRIMARY KEY, tag text, n int);
	SELECT signalbus_register('s010', routing_key => '$Q');
	CREATE TABLE s010_a (id bigserial PRIMARY KEY, tag text);
	SELECT signalbus_register('s010_a', routing_key => '$QA');
	CREATE TABLE s010_b (id bigserial PRIMARY KEY, tag text);
	SELECT signalbus_register('s010_b', routing_key => '$QB');
	CREATE TABLE s010_manual (id bigserial PRIMARY KEY, tag text);
	SELECT signalbus_register('s010_manual', routing_key => '$QM',
	                          autoflush => false);
});

# --- helpers ---------------------------------------------------------------

# the "tag" of every message (body = the row as JSON)
sub tags_of
{
	my ($msgs) = @_;
	return [ sort map { body_json($_)->{tag} // '<null>' } @$msgs ];
}

# Read exactly the messages @$expected (tags) from $queue: wait for that
# many, then take whatever else the queue holds too (duplicates, strays),
# and compare the multiset of tags.
sub expect_tags
{
	my ($queue, $expected, $what) = @_;
	my $msgs = get_messages($queue, count => scalar @$expected, timeout => 30);
	push @$msgs, @{ get_messages($queue) };
	my $got = tags_of($msgs);
	my $want = [ sort @$expected ];
	is_deeply($got, $want, "$what: broker received exactly the expected messages")
	  or diag "queue $queue held " . scalar(@$got) . " message(s): [@$got]\n"
	  . "expected " . scalar(@$want) . ": [@$want]";
	return $msgs;
}

sub table_drained
{
	my ($table, $what) = @_;
	ok(wait_for_sql($node, "SELECT count(*) FROM $table", '0'),
		"$what: $table is drained");
}

# --- warm-up: the worker is connected, its first sweep is over --------------

$node->safe_psql('postgres', q{INSERT INTO s010 (tag) VALUES ('warmup')});
expect_tags($Q, ['warmup'], 'warm-up row');
table_drained('s010', 'warm-up row');
ok(wait_for_sql($node, 'SELECT state FROM signalbus_status', 'idle'),
	'worker is idle after its first sweep');

# --- 1,000 rows in one transaction -----------------------------------------

my $ids = $node->safe_psql('postgres', q{
	BEGIN;
	INSERT INTO s010 (tag, n) SELECT 'bulk', g FROM generate_series(1, 1000) g
	RETURNING id;
	COMMIT;
});
my @inserted = sort { $a <=> $b } split /\n/, $ids;
is(scalar @inserted, 1000, '1,000 rows inserted');
{
	my $msgs = get_messages($Q, count => 1000, timeout => 30);
	table_drained('s010', '1,000-row transaction');
	push @$msgs, @{ get_messages($Q) };
	is(scalar @$msgs, 1000, '1,000-row transaction: exactly 1,000 messages')
	  or diag 'broker held ' . scalar(@$msgs) . ' messages, expected 1000';
	my %seen;
	$seen{ body_json($_)->{id} }++ for @$msgs;
	my @dups = grep { $seen{$_} > 1 } sort { $a <=> $b } keys %seen;
	is_deeply(\@dups, [], '1,000-row transaction: no id sent twice')
	  or diag "ids received more than once: @dups";
	is_deeply([ sort { $a <=> $b } keys %seen ], \@inserted,
		'1,000-row transaction: every inserted id received')
	  or diag 'received ' . scalar(keys %seen) . ' distinct ids';
	my %n;
	$n{ body_json($_)->{n} }++ for @$msgs;
	is(scalar(keys %n), 1000, '1,000-row transaction: bodies are the rows');
	is(queue_length($Q), 0, '1,000-row transaction: nothing more in the queue');
}

# --- ROLLBACK sends nothing -------------------------------------------------

$node->safe_psql('postgres', q{
	BEGIN;
	INSERT INTO s010 (tag) SELECT 'rolled-back' FROM generate_series(1, 10);
	ROLLBACK;
	INSERT INTO s010 (tag) VALUES ('after-rollback');
});
expect_tags($Q, ['after-rollback'], 'ROLLBACK then a committed marker');
table_drained('s010', 'ROLLBACK');
sleep 0.5;    # a late stray, if any, would show up now
is_deeply(tags_of(get_messages($Q)), [], 'ROLLBACK: nothing else arrived');

# --- savepoints -------------------------------------------------------------

$node->safe_psql('postgres', q{
	BEGIN;
	INSERT INTO s010 (tag) VALUES ('sp-keep-1');
	SAVEPOINT a;
	INSERT INTO s010 (tag) VALUES ('sp-rolled-1');
	ROLLBACK TO SAVEPOINT a;
	INSERT INTO s010 (tag) VALUES ('sp-keep-2');
	SAVEPOINT b;
	INSERT INTO s010 (tag) VALUES ('sp-keep-3');
	RELEASE SAVEPOINT b;
	-- nested: c { keep-4, d { rolled-2 } rolled back, e { keep-5 } released }
	SAVEPOINT c;
	INSERT INTO s010 (tag) VALUES ('sp-keep-4');
	SAVEPOINT d;
	INSERT INTO s010 (tag) VALUES ('sp-rolled-2');
	ROLLBACK TO SAVEPOINT d;
	SAVEPOINT e;
	INSERT INTO s010 (tag) VALUES ('sp-keep-5');
	RELEASE SAVEPOINT e;
	RELEASE SAVEPOINT c;
	-- nested, the outer one rolled back after the inner one was released
	SAVEPOINT f;
	INSERT INTO s010 (tag) VALUES ('sp-rolled-3');
	SAVEPOINT g;
	INSERT INTO s010 (tag) VALUES ('sp-rolled-4');
	RELEASE SAVEPOINT g;
	ROLLBACK TO SAVEPOINT f;
	INSERT INTO s010 (tag) VALUES ('sp-keep-6');
	-- the same savepoint rolled back twice, with a row in between
	SAVEPOINT h;
	INSERT INTO s010 (tag) VALUES ('sp-rolled-5');
	ROLLBACK TO SAVEPOINT h;
	INSERT INTO s010 (tag) VALUES ('sp-rolled-6');
	ROLLBACK TO SAVEPOINT h;
	RELEASE SAVEPOINT h;
	INSERT INTO s010 (tag) VALUES ('sp-keep-7');
	COMMIT;
});
expect_tags($Q, [ map { "sp-keep-$_" } 1 .. 7 ], 'savepoints');
table_drained('s010', 'savepoints');

# --- PL/pgSQL EXCEPTION blocks ----------------------------------------------

$node->safe_psql('postgres', q{
	DO $$
	BEGIN
		INSERT INTO s010 (tag) VALUES ('exc-keep-1');
		BEGIN
			INSERT INTO s010 (tag) VALUES ('exc-rolled-1');
			RAISE EXCEPTION 'undo the block';
		EXCEPTION WHEN raise_exception THEN
			INSERT INTO s010 (tag) VALUES ('exc-keep-handler');
		END;
		BEGIN
			INSERT INTO s010 (tag) VALUES ('exc-keep-2');   -- block succeeds
		EXCEPTION WHEN others THEN
			NULL;
		END;
		BEGIN
			-- a failing statement: the rows of the block go with it
			INSERT INTO s010 (tag) VALUES ('exc-rolled-2');
			PERFORM 1 / 0;
		EXCEPTION WHEN division_by_zero THEN
			NULL;
		END;
		INSERT INTO s010 (tag) VALUES ('exc-keep-3');
	END
	$$;
});
expect_tags($Q, [qw(exc-keep-1 exc-keep-handler exc-keep-2 exc-keep-3)],
	'PL/pgSQL EXCEPTION blocks');
table_drained('s010', 'PL/pgSQL EXCEPTION blocks');

# --- COPY and multi-row INSERT ----------------------------------------------

$node->safe_psql('postgres',
	"COPY s010 (tag, n) FROM STDIN;\n"
	  . join('', map { "copy-stdin\t$_\n" } 1 .. 30)
	  . "\\.\n");
expect_tags($Q, [ ('copy-stdin') x 30 ], 'COPY FROM STDIN');
table_drained('s010', 'COPY FROM STDIN');

$node->safe_psql('postgres', q{
	COPY s010 (tag, n) FROM PROGRAM 'seq 1 50 | sed -e "s/^/copy-program,/"'
	WITH (FORMAT csv);
});
expect_tags($Q, [ ('copy-program') x 50 ], 'COPY FROM PROGRAM (50 rows)');
table_drained('s010', 'COPY FROM PROGRAM');

$node->safe_psql('postgres', q{
	INSERT INTO s010 (tag, n) VALUES ('multi', 1), ('multi', 2), ('multi', 3),
	                                 ('multi', 4), ('multi', 5);
});
expect_tags($Q, [ ('multi') x 5 ], 'multi-row INSERT');
table_drained('s010', 'multi-row INSERT');

# --- two signal tables in one transaction ------------------------------------

$node->safe_psql('postgres', q{
	BEGIN;
	INSERT INTO s010_a (tag) VALUES ('a-1');
	INSERT INTO s010_b (tag) VALUES ('b-1');
	INSERT INTO s010_a (tag) VALUES ('a-2'), ('a-3');
	INSERT INTO s010_b (tag) VALUES ('b-2'), ('b-3'), ('b-4');
	COMMIT;
});
expect_tags($QA, [qw(a-1 a-2 a-3)], 'two tables, first queue');
expect_tags($QB, [qw(b-1 b-2 b-3 b-4)], 'two tables, second queue');
table_drained('s010_a', 'two tables');
table_drained('s010_b', 'two tables');

# --- SET signalbus.autoflush = off ------------------------------------------

$node->safe_psql('postgres', q{
	SET signalbus.autoflush = off;
	INSERT INTO s010 (tag) VALUES ('noauto-1');
	INSERT INTO s010 (tag) VALUES ('noauto-2'), ('noauto-3');
	BEGIN;
	INSERT INTO s010 (tag) VALUES ('noauto-4');
	INSERT INTO s010 (tag) VALUES ('noauto-5');
	COMMIT;
	-- the setting is per session: back on, the next commit is sent
	SET signalbus.autoflush = on;
	INSERT INTO s010 (tag) VALUES ('autoflush-back-on');
});
# a commit of another session (autoflush on) after them: once it has
# arrived, the worker has been awake since the autoflush-off commits
$node->safe_psql('postgres', q{INSERT INTO s010 (tag) VALUES ('marker-1')});
expect_tags($Q, [qw(autoflush-back-on marker-1)],
	'autoflush off: only the rows committed with autoflush on are sent');
sleep 2;    # let a wrongly woken worker send them, if it would
is_deeply(tags_of(get_messages($Q)), [],
	'autoflush off: nothing else arrived within 2 s');
is($node->safe_psql('postgres',
		"SELECT string_agg(tag, ',' ORDER BY tag) FROM s010"),
	'noauto-1,noauto-2,noauto-3,noauto-4,noauto-5',
	'autoflush off: the rows are still pending');
is($node->safe_psql('postgres', q{SELECT signalbus_flush('s010')}),
	'5', 'autoflush off: signalbus_flush() sends the 5 rows');
expect_tags($Q, [ map { "noauto-$_" } 1 .. 5 ],
	'autoflush off: signalbus_flush()');
table_drained('s010', 'autoflush off after signalbus_flush()');

# --- a table registered with autoflush => false ------------------------------

$node->safe_psql('postgres', q{
	INSERT INTO s010_manual (tag) VALUES ('manual-1');
	BEGIN;
	INSERT INTO s010_manual (tag) VALUES ('manual-2'), ('manual-3');
	INSERT INTO s010 (tag) VALUES ('marker-same-xact');
	COMMIT;
});
$node->safe_psql('postgres', q{INSERT INTO s010 (tag) VALUES ('marker-2')});
expect_tags($Q, [qw(marker-same-xact marker-2)],
	'autoflush => false: rows of other tables are sent');
sleep 2;
is(queue_length($QM), 0,
	'autoflush => false: nothing of the table arrived within 2 s');
is($node->safe_psql('postgres', 'SELECT count(*) FROM s010_manual'),
	'3', 'autoflush => false: the rows are still pending');
is($node->safe_psql('postgres', q{SELECT signalbus_flush('s010_manual')}),
	'3', 'autoflush => false: signalbus_flush() sends the 3 rows');
expect_tags($QM, [qw(manual-1 manual-2 manual-3)],
	'autoflush => false: signalbus_flush()');
table_drained('s010_manual', 'autoflush => false after signalbus_flush()');

# nothing anywhere was left behind or sent twice
is($node->safe_psql('postgres',
		'SELECT coalesce(sum(pending), 0) FROM signalbus_pending'),
	'0', 'no signal table holds a pending row');
is(queue_length($_), 0, "queue $_ is empty at the end") for ($Q, $QA, $QB, $QM);
is($node->safe_psql('postgres',
		'SELECT overflows FROM signalbus_status'),
	'0', 'the commit queue never overflowed');

$node->stop;
done_testing();
