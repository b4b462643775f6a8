# 020_no_worker.pl -- signalbus without its worker.
#
# 1. A node WITHOUT signalbus in shared_preload_libraries: the library is
#    loaded by CREATE EXTENSION and by the functions.  Registration works,
#    commits never block or fail and queue nothing, rows stay pending, and
#    signalbus_flush() sends them from the calling backend; signalbus_status
#    fails with SQLSTATE 55000.
# 2. A preloaded node whose signalbus.databases does not name the database
#    in use: commits there queue nothing (no worker serves it), while
#    signalbus_flush() there sends.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep);
use SignalBusTest;

my $QA = 'q020_a';
my $QB = 'q020_b';
my $QO = 'q020_other';
my $QP = 'q020_postgres';
declare_queue($_) for ($QA, $QB, $QO, $QP);

sub tags_of
{
	my ($msgs) = @_;
	return [ sort map { body_json($_)->{tag} // '<null>' } @$msgs ];
}

# exactly the messages @$expected (tags) from $queue
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
}

# ============================================================================
# 1. not preloaded
# ============================================================================

my $plain = PostgreSQL::Test::Cluster->new('plain020');
$plain->init;
$plain->append_conf('postgresql.conf',
	"signalbus.amqp_url = '" . amqp_url() . "'\n"
	  . "signalbus.flush_interval = '100ms'\n");
$plain->start;

is($plain->safe_psql('postgres', 'SHOW shared_preload_libraries'), '',
	'not preloaded: shared_preload_libraries is empty');

# CREATE EXTENSION loads the library into a backend that did not preload it
my ($ret, $out, $err) = $plain->psql('postgres', 'CREATE EXTENSION signalbus');
is($ret, 0, 'not preloaded: CREATE EXTENSION succeeds')
  or diag "CREATE EXTENSION signalbus failed: $err";
is($err, '', 'not preloaded: CREATE EXTENSION reports no error');

SKIP:
{
	skip 'the extension could not be created without shared_preload_libraries', 22
	  if $ret != 0;

	$plain->safe_psql('postgres', qq{
		CREATE TABLE t020_a (id bigserial PRIMARY KEY, tag text);
		SELECT signalbus_register('t020_a', routing_key => '$QA');
		CREATE TABLE t020_b (id bigserial PRIMARY KEY, tag text);
		SELECT signalbus_register('t020_b', routing_key => '$QB');
	});
	is($plain->safe_psql('postgres',
			q{SELECT string_agg(signal::text || ':' || routing_key, ',' ORDER BY signal::text)
			  FROM signalbus_signals}),
		"t020_a:$QA,t020_b:$QB", 'not preloaded: signalbus_register() works');

	# INSERT + COMMIT: in a fresh session each (the library is loaded by the
	# trigger), in an explicit transaction, and many rows at once
	($ret, $out, $err) = $plain->psql('postgres', q{
		INSERT INTO t020_a (tag) VALUES ('a-1');
		BEGIN;
		INSERT INTO t020_a (tag) VALUES ('a-2'), ('a-3');
		INSERT INTO t020_b (tag) VALUES ('b-1');
		COMMIT;
		INSERT INTO t020_b (tag) SELECT 'b-many' FROM generate_series(1, 200);
	}, timeout => 60);
	is($ret, 0, 'not preloaded: INSERT + COMMIT succeed');
	is($err, '', 'not preloaded: no error or warning on commit');
	($ret, $out, $err) = $plain->psql('postgres',
		q{INSERT INTO t020_a (tag) VALUES ('a-4')}, timeout => 60);
	is($ret, 0, 'not preloaded: INSERT in a fresh session succeeds');
	is($err, '', 'not preloaded: fresh session, no error or warning');

	sleep 1;    # there is no worker: prove that nothing is sent by itself
	is($plain->safe_psql('postgres',
			q{SELECT string_agg(signal::text || '=' || pending, ',' ORDER BY signal::text)
			  FROM signalbus_pending}),
		't020_a=4,t020_b=201', 'not preloaded: the rows stay pending');
	is(queue_length($QA), 0, "not preloaded: nothing arrived in $QA");
	is(queue_length($QB), 0, "not preloaded: nothing arrived in $QB");

	# signalbus_status needs the shared memory of shared_preload_libraries
	($ret, $out, $err) = $plain->psql('postgres',
		"\\set VERBOSITY verbose\nSELECT * FROM signalbus_status");
	isnt($ret, 0, 'not preloaded: SELECT * FROM signalbus_status fails');
	like($err, qr/ERROR:\s+55000:/, 'not preloaded: signalbus_status fails with SQLSTATE 55000')
	  or diag "stderr: $err";
	like($err, qr/shared_preload_libraries/, 'not preloaded: the error names shared_preload_libraries');

	# signalbus_flush('t020_a'): that table only
	is($plain->safe_psql('postgres', q{SELECT signalbus_flush('t020_a')}),
		'4', 'not preloaded: signalbus_flush(\'t020_a\') returns 4');
	expect_tags($QA, [qw(a-1 a-2 a-3 a-4)], 'not preloaded: signalbus_flush(one table)');
	is($plain->safe_psql('postgres', 'SELECT count(*) FROM t020_a'),
		'0', 'not preloaded: t020_a is empty after its flush');
	is($plain->safe_psql('postgres', 'SELECT count(*) FROM t020_b'),
		'201', 'not preloaded: the other table was not flushed');
	is(queue_length($QB), 0, "not preloaded: nothing arrived in $QB yet");

	# signalbus_flush(): every table
	$plain->safe_psql('postgres', q{INSERT INTO t020_a (tag) VALUES ('a-5')});
	is($plain->safe_psql('postgres', q{SELECT signalbus_flush()}),
		'202', 'not preloaded: signalbus_flush() returns the count of both tables');
	expect_tags($QB, [ 'b-1', ('b-many') x 200 ], 'not preloaded: signalbus_flush()');
	expect_tags($QA, ['a-5'], 'not preloaded: signalbus_flush()');
	is($plain->safe_psql('postgres',
			'SELECT (SELECT count(*) FROM t020_a) + (SELECT count(*) FROM t020_b)'),
		'0', 'not preloaded: both tables are empty');
	is($plain->safe_psql('postgres', q{SELECT signalbus_flush()}),
		'0', 'not preloaded: a second signalbus_flush() sends nothing');
	is(queue_length($QA) + queue_length($QB), 0, 'not preloaded: no duplicates');
}    # SKIP

$plain->stop;

# ============================================================================
# 2. preloaded, but signalbus.databases does not name the database in use
# ============================================================================

my $node = new_node('dbs020', databases => 'postgres', flush_interval => '200ms');
$node->start;
$node->safe_psql('postgres', 'CREATE DATABASE other');
$node->safe_psql('postgres', qq{
	CREATE EXTENSION signalbus;
	CREATE TABLE t020_p (id bigserial PRIMARY KEY, tag text);
	SELECT signalbus_register('t020_p', routing_key => '$QP');
});
$node->safe_psql('other', qq{
	CREATE EXTENSION signalbus;
	CREATE TABLE t020_o (id bigserial PRIMARY KEY, tag text);
	SELECT signalbus_register('t020_o', routing_key => '$QO');
});

is($node->safe_psql('other',
		q{SELECT string_agg(database::text, ',') FROM signalbus_status}),
	'postgres', 'signalbus_status (seen from "other") lists only the configured database');

# commits in "other", then commits in "postgres" (which has a worker) that
# must arrive: by then a wrongly queued row of "other" would have been seen
$node->safe_psql('other', q{
	INSERT INTO t020_o (tag) VALUES ('o-1');
	BEGIN;
	INSERT INTO t020_o (tag) VALUES ('o-2'), ('o-3');
	COMMIT;
});
$node->safe_psql('postgres', q{INSERT INTO t020_p (tag) VALUES ('p-marker')});
expect_tags($QP, ['p-marker'], 'configured database: its worker sends');
ok(wait_for_sql($node, 'SELECT count(*) FROM t020_p', '0'),
	'configured database: its table is drained');
sleep 1;    # five sweeps of the postgres worker
is(queue_length($QO), 0, 'unconfigured database: nothing sent');
is($node->safe_psql('other', 'SELECT count(*) FROM t020_o'),
	'3', 'unconfigured database: the rows stay pending');
is($node->safe_psql('other', 'SELECT queued + overflows FROM signalbus_status'),
	'0', 'unconfigured database: nothing was queued for any worker');

is($node->safe_psql('other', 'SELECT signalbus_flush()'),
	'3', 'unconfigured database: signalbus_flush() returns 3');
expect_tags($QO, [qw(o-1 o-2 o-3)], 'unconfigured database: signalbus_flush()');
is($node->safe_psql('other', 'SELECT count(*) FROM t020_o'),
	'0', 'unconfigured database: the table is empty after the flush');

$node->stop;
done_testing();
