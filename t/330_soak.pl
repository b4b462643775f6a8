
# A bounded soak: three sessions insert signals for 60 s (pgbench, 400
# transactions/s in all) while the broker is stopped and started twice, the
# worker is terminated once (SIGTERM), and the broker closes the worker's
# connection once.  Each transaction also records its id in a ledger table
# (not a signal table), so "committed" is known exactly.  At the end every
# committed id arrived at least once, the signal table is empty, nothing was
# dead-lettered (signalbus.max_attempts is 1: a fault must never count
# against a row), and the duplicates are counted.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(time sleep);
use SignalBusTest;

my $Q = '330.soak';
my $DURATION = 60;
my $RATE = 400;

my $node = new_node(
	'soak',
	flush_interval => '1s',
	'signalbus.max_backoff' => '2s',
	'signalbus.confirm_timeout' => '5s',
	'signalbus.max_attempts' => 1);
$node->start;
declare_queue($Q);
$node->safe_psql('postgres', qq{
	CREATE EXTENSION signalbus;
	CREATE TABLE s330 (id bigserial PRIMARY KEY, client int, v text);
	SELECT signalbus_register('s330', routing_key => '$Q');
	CREATE TABLE ledger (id bigint PRIMARY KEY);
});
ok( $node->poll_query_until(
		'postgres',
		"SELECT state = 'idle' FROM signalbus_status WHERE database = 'postgres'"),
	'worker idle');

sub status { return worker_status($node, @_) }

my $script = "$PostgreSQL::Test::Utils::tmp_check/330_insert.sql";
open my $fh, '>', $script or die "$script: $!";
print $fh "WITH s AS (INSERT INTO s330 (client, v) VALUES (:client_id, 'soak') RETURNING id)\n"
  . "INSERT INTO ledger SELECT id FROM s;\n";
close $fh;

my ($out, $err) = ('', '');
my $pgbench = IPC::Run::start(
	[
		'pgbench', '-n', '-c', 3, '-j', 3, '-T', $DURATION, '-R', $RATE,
		'-f', $script, '-h', $node->host, '-p', $node->port, 'postgres'
	],
	'<', \undef, '>', \$out, '2>', \$err);
END { $pgbench->kill_kill if $pgbench && $pgbench->pumpable; }
my $t0 = time;

my $worker_pid = status('pid');
my @faults = (
	[ 8, 'broker stop_app', sub { broker_stop() } ],
	[ 14, 'broker start_app', sub { broker_start() } ],
	[ 24, 'worker SIGTERM', sub {
			my $pid = status('pid');
			my $r = $node->safe_psql('postgres', "SELECT pg_terminate_backend($pid, 10000)");
			return "pid $pid: $r";
	  } ],
	[ 32, 'broker stop_app', sub { broker_stop() } ],
	[ 38, 'broker start_app', sub { broker_start() } ],
	[ 48, 'close_all_connections', sub { broker_ctl('-q', 'close_all_connections', 'soak') } ],
);
my @timeline;
my @recovery;
my $await;    # [fault, time]: waiting for the backlog to be gone
my $next_sample = 0;
my $next_print = 0;
my $last_fault_at;
while ($pgbench->pumpable)
{
	my $t = time - $t0;
	if (@faults && $t >= $faults[0][0])
	{
		my ($at, $what, $code) = @{ shift @faults };
		my $r = $code->();
		$r = '' unless defined $r;
		chomp $r;
		$last_fault_at = time;
		push @timeline, sprintf('%5.1f s  %s%s', $t, $what,
			$r ne '' && $r ne '1' ? " ($r)" : '');
		$await = [ $what, $last_fault_at ] unless $what =~ /stop_app/;
	}
	if ($t >= $next_sample)
	{
		my $pending = $node->safe_psql('postgres', 'SELECT count(*) FROM s330');
		if ($await && $pending < 100)
		{
			push @recovery, sprintf('%s: backlog gone %.1f s later', $await->[0],
				time - $await->[1]);
			$await = undef;
		}
		if ($t >= $next_print)
		{
			$next_print = $t + 3;
			push @timeline,
			  sprintf('%5.1f s  pending %s, committed %s; worker %s', $t, $pending,
				$node->safe_psql('postgres', 'SELECT count(*) FROM ledger'),
				status("coalesce(pid::text, '-') || ' ' || state || ', sent ' || sent || ', overflows ' || overflows"));
		}
		$next_sample = $t + 0.5;
	}
	last if $t > $DURATION + 60;
	$pgbench->pump_nb;
	sleep 0.1;
}
ok($pgbench->finish, 'pgbench finished without errors') or diag "pgbench: $err";
my $inserted_for = time - $t0;
ok(!@faults, 'every fault was injected') or diag 'left: ' . join(', ', map { $_->[1] } @faults);
note $out;
my ($processed) = $out =~ /number of transactions actually processed: (\d+)/;
my ($failed) = $out =~ /number of failed transactions: (\d+)/;

my $t_end = time;
ok(wait_for_sql($node, 'SELECT count(*) FROM s330', '0', 90),
	'the signal table drains after the soak');
my $drain = time - $t_end;
push @timeline, sprintf('%5.1f s  drained (%.1f s after the inserts stopped, %.1f s after the last fault)',
	time - $t0, $drain, time - $last_fault_at);
note "timeline:\n" . join("\n", @timeline);
note "recovery after each fault:\n" . join("\n", @recovery);

my @ids = split /\n/, $node->safe_psql('postgres', 'SELECT id FROM ledger ORDER BY id');
my $committed = @ids;
is($committed, $processed // -1, "the ledger holds every transaction pgbench counted ($committed)");
is($failed // 0, 0, 'no pgbench transaction failed');
cmp_ok($committed, '>', $RATE * $DURATION / 2, 'the soak kept a sustained insert rate');

my $msgs = get_messages($Q, count => $committed, timeout => 90);
push @$msgs, @{ get_messages($Q) };
my %seen;
$seen{ body_json($_)->{id} }++ for @$msgs;
my @missing = grep { !$seen{$_} } @ids;
my %want = map { $_ => 1 } @ids;
my @unexpected = grep { !$want{$_} } keys %seen;
my $dups = @$msgs - keys %seen;
is(scalar(@missing), 0, 'every committed id arrived (lost: ' . scalar(@missing) . ')')
  or diag 'the broker held ' . scalar(@$msgs) . " messages for $committed committed rows; missing (first 20): "
  . join(',', @missing[ 0 .. ($#missing < 19 ? $#missing : 19) ]);
is(scalar(@unexpected), 0, 'no id that was not committed');
note sprintf '%d messages for %d committed rows: %d duplicates (%.2f%%), %d ids more than once',
  scalar(@$msgs), $committed, $dups, 100 * $dups / ($committed || 1),
  scalar(grep { $seen{$_} > 1 } keys %seen);

is($node->safe_psql('postgres', 'SELECT count(*) FROM signalbus_dead_letters'),
	'0', 'no row dead-lettered');
isnt(status('pid'), $worker_pid, 'the worker was replaced after SIGTERM');
ok(wait_for_sql($node, "SELECT state FROM signalbus_status WHERE database = 'postgres'", 'idle'),
	'the worker is idle at the end');
my $log = slurp_file($node->logfile);
unlike($log, qr/terminated by signal/, 'no process crashed');
my @lines = grep { /signalbus worker for database "postgres"/ } split /\n/, $log;
note scalar(@lines) . " worker log lines:\n" . join("\n", @lines);
cmp_ok(scalar(@lines), '<=', 30, 'no log flood');
note sprintf 'soak: inserts for %.0f s, %d rows, drained %.1f s after the inserts stopped',
  $inserted_for, $committed, $drain;

$node->stop;
done_testing();
