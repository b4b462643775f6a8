
# Two-phase commit: rows of a prepared transaction are not sent while it is
# prepared (they are not committed), COMMIT PREPARED makes them pending and
# the worker's sweep sends them, ROLLBACK PREPARED means they are never sent.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);
use SignalBusTest;

my $Q = '060.prepared';

my $node = new_node('prepared', flush_interval => '1s');
$node->start;
declare_queue($Q);
cmp_ok($node->safe_psql('postgres', 'SHOW max_prepared_transactions'),
	'>', 0, 'max_prepared_transactions > 0');

$node->safe_psql('postgres', qq{
	CREATE EXTENSION signalbus;
	CREATE TABLE s060 (id int PRIMARY KEY, v text);
	SELECT signalbus_register('s060', routing_key => '$Q');
});

my @received;    # every message taken from the queue, in order

sub take
{
	my ($count) = @_;
	my $m = get_messages($Q, count => $count, timeout => 30);
	push @received, map { body_json($_)->{id} } @$m;
	return [ map { body_json($_)->{id} } @$m ];
}

# marker: a row committed with signalbus.autoflush off reaches the broker
# only through a sweep of the table; once it arrived, a whole sweep ran
# after everything committed before it
sub sweep_marker
{
	my ($id) = @_;
	$node->safe_psql('postgres',
		"SET signalbus.autoflush = off; INSERT INTO s060 VALUES ($id, 'marker')");
	my $got = take(1);
	return is("@$got", $id, "marker $id arrived through a sweep");
}

# --- prepare ------------------------------------------------------------
$node->safe_psql('postgres', q{
	BEGIN;
	INSERT INTO s060 SELECT g, 'p1' FROM generate_series(1, 5) g;
	PREPARE TRANSACTION 'sb060_p1';
	BEGIN;
	INSERT INTO s060 SELECT g, 'p2' FROM generate_series(11, 15) g;
	PREPARE TRANSACTION 'sb060_p2';
});
is($node->safe_psql('postgres', 'SELECT count(*) FROM pg_prepared_xacts'),
	'2', 'two prepared transactions');

# a normal commit right after: fast path, while the prepared rows wait
$node->safe_psql('postgres', q{INSERT INTO s060 VALUES (100, 'committed')});
is("@{take(1)}", '100', 'a committed row is sent while others are prepared');
sweep_marker(101);
sweep_marker(102);
is(queue_length($Q), 0, 'nothing else reached the broker');
is("@received", '100 101 102',
	'no row of a prepared transaction was sent while it was prepared');
is($node->safe_psql('postgres', 'SELECT count(*) FROM s060'),
	'0', 'no committed row left');

# --- COMMIT PREPARED -----------------------------------------------------
$node->safe_psql('postgres', q{COMMIT PREPARED 'sb060_p1'});
my $got = take(5);
is(join(',', sort { $a <=> $b } @$got), '1,2,3,4,5',
	'COMMIT PREPARED: its rows arrive (sent by the sweep)');
ok(wait_for_sql($node, "SELECT count(*) FROM s060 WHERE v = 'p1'", '0'),
	'committed prepared rows deleted');

# --- ROLLBACK PREPARED ---------------------------------------------------
$node->safe_psql('postgres', q{ROLLBACK PREPARED 'sb060_p2'});
sweep_marker(103);
sweep_marker(104);
is(queue_length($Q), 0, 'nothing else reached the broker');
my @p2 = grep { $_ >= 11 && $_ <= 15 } @received;
is("@p2", '', 'ROLLBACK PREPARED: its rows were never sent');
is($node->safe_psql('postgres', 'SELECT count(*) FROM s060'),
	'0', 'table empty');

# --- prepared in one session, committed from another, mixed with a normal
# transaction that is in flight ---------------------------------------------
my $bg = $node->background_psql('postgres');
$bg->query_safe(q{BEGIN; INSERT INTO s060 SELECT g, 'p3' FROM generate_series(21, 25) g;
	PREPARE TRANSACTION 'sb060_p3';});
$bg->query_safe(q{BEGIN; INSERT INTO s060 VALUES (30, 'plain');});
$node->safe_psql('postgres', q{COMMIT PREPARED 'sb060_p3'});
$bg->query_safe('COMMIT');
$bg->quit;
$got = take(6);
is(join(',', sort { $a <=> $b } @$got), '21,22,23,24,25,30',
	'rows of a transaction prepared by another session, and the session\'s next transaction, arrive');
ok(wait_for_sql($node, 'SELECT count(*) FROM s060', '0'), 'table drained');
is(queue_length($Q), 0, 'no duplicates');

my %n;
$n{$_}++ for @received;
my @dups = grep { $n{$_} > 1 } keys %n;
is("@dups", '', 'no row was sent twice');

$node->stop;
done_testing();
