
# The commit queue in shared memory is bounded (signalbus.queue_size).  Rows
# that do not fit "overflow": the committing backend marks the table for a
# sweep and the worker sweeps it at once (flush_interval is 1h here, so the
# periodic sweep cannot be what sends them).  Nothing is lost.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);
use SignalBusTest;

my $QA = '070.big';
my $QB = '070.small';

my $node = new_node(
	'overflow',
	flush_interval => '1h',
	'signalbus.queue_size' => 16);
$node->start;
declare_queue($_) for $QA, $QB;
is($node->safe_psql('postgres', 'SHOW signalbus.queue_size'), '16', 'queue_size 16');

$node->safe_psql('postgres', qq{
	CREATE EXTENSION signalbus;
	CREATE TABLE s070a (id int PRIMARY KEY, v text);
	SELECT signalbus_register('s070a', routing_key => '$QA');
	CREATE TABLE s070b (id bigserial PRIMARY KEY, client int, v text);
	SELECT signalbus_register('s070b', routing_key => '$QB');
});
# the worker's start-up sweep is over once it is idle
ok( $node->poll_query_until(
		'postgres',
		"SELECT state = 'idle' FROM signalbus_status WHERE database = 'postgres'"),
	'worker idle');

sub overflows
{
	return $node->safe_psql('postgres',
		"SELECT overflows FROM signalbus_status WHERE database = 'postgres'");
}

# check that queue $q received every id in 1..$n (at least once)
sub check_all_arrived
{
	my ($q, $n, $what) = @_;
	my $msgs = get_messages($q, count => $n, timeout => 30);
	push @$msgs, @{ get_messages($q) };
	my %seen;
	$seen{ body_json($_)->{id} }++ for @$msgs;
	my @missing = grep { !$seen{$_} } 1 .. $n;
	is(scalar(@missing), 0, "$what: all $n rows arrived")
	  or diag scalar(@$msgs) . " messages in $q; missing ids: "
	  . join(',', @missing[ 0 .. ($#missing < 20 ? $#missing : 19) ]);
	my @dups = grep { $seen{$_} > 1 } keys %seen;
	note "$what: " . scalar(@$msgs) . ' messages, ' . scalar(@dups) . ' duplicated ids';
	return;
}

# --- one transaction of 1,000 rows --------------------------------------------
my $ov0 = overflows();
my $t0 = time;
$node->safe_psql('postgres',
	"INSERT INTO s070a SELECT g, 'big' FROM generate_series(1, 1000) g");
check_all_arrived($QA, 1000, 'one 1,000-row transaction');
my $elapsed = time - $t0;
note sprintf 'the 1,000 rows arrived within %.1f s', $elapsed;
ok(wait_for_sql($node, 'SELECT count(*) FROM s070a', '0'), 'table drained');
my $ov1 = overflows();
note "overflows: $ov0 -> $ov1";
cmp_ok($ov1, '>', $ov0, 'signalbus_status.overflows counts the rows that did not fit');

# --- many small concurrent transactions while the worker cannot pop --------
# SIGSTOP freezes the worker, so the queue fills up after 16 commits and
# every later commit overflows; SIGCONT lets it catch up.
my $pid = $node->safe_psql('postgres',
	"SELECT pid FROM signalbus_status WHERE database = 'postgres'");
ok($pid =~ /^\d+$/, "worker pid $pid");
my $stopped = 0;
END { kill 'CONT', $pid if $stopped; }

my $script = "$PostgreSQL::Test::Utils::tmp_check/070_insert.sql";
open my $fh, '>', $script or die $!;
print $fh "INSERT INTO s070b (client, v) VALUES (:client_id, 'small');\n";
close $fh;

sub pgbench
{
	my ($clients, $tx, $what) = @_;
	$node->command_ok(
		[
			'pgbench', '-n', '-c', $clients, '-j', $clients, '-t', $tx,
			'-f', $script, '-h', $node->host, '-p', $node->port, 'postgres'
		],
		$what);
}

$ov0 = overflows();
# SIGSTOP it while it waits on its latch (holding no LWLock: committing
# backends would hang on the slot's lock otherwise)
for my $try (1 .. 100)
{
	kill 'STOP', $pid or die "kill -STOP $pid: $!";
	$stopped = 1;
	last
	  if $node->safe_psql('postgres',
		"SELECT wait_event FROM pg_stat_activity WHERE pid = $pid") eq 'Extension';
	kill 'CONT', $pid;
	$stopped = 0;
	sleep 0.05;
}
ok($stopped, 'worker frozen while waiting on its latch');
pgbench(2, 200, '400 single-row commits from 2 clients while the worker is frozen');
is($node->safe_psql('postgres',
		"SELECT queued FROM signalbus_status WHERE database = 'postgres'"),
	'16', 'the queue is full (16)');
$ov1 = overflows();
note "overflows: $ov0 -> $ov1";
cmp_ok($ov1 - $ov0, '>=', 400 - 16, 'the other commits overflowed');
kill 'CONT', $pid;
$stopped = 0;
check_all_arrived($QB, 400, '400 small transactions after an overflow');
ok(wait_for_sql($node, 'SELECT count(*) FROM s070b', '0'), 'table drained');
is($node->safe_psql('postgres',
		"SELECT pid FROM signalbus_status WHERE database = 'postgres'"),
	$pid, 'same worker');

# --- and with the worker running: 4 clients x 250 commits ----------------
$node->safe_psql('postgres', 'ALTER SEQUENCE s070b_id_seq RESTART WITH 1');
$ov0 = overflows();
pgbench(4, 250, '1,000 single-row commits from 4 concurrent clients');
check_all_arrived($QB, 1000, '1,000 concurrent small transactions');
ok(wait_for_sql($node, 'SELECT count(*) FROM s070b', '0'), 'table drained');
note 'overflows during the concurrent run: ' . (overflows() - $ov0);

# the queue is usable again: a single row takes the fast path
$node->safe_psql('postgres', q{INSERT INTO s070a VALUES (5000, 'last')});
my $m = get_messages($QA, count => 1, timeout => 30);
is(scalar(@$m) && body_json($m->[0])->{id}, 5000, 'fast path still works');
is($node->safe_psql('postgres',
		"SELECT queued FROM signalbus_status WHERE database = 'postgres'"),
	'0', 'queue empty');

$node->stop;
done_testing();
