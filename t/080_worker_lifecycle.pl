
# The worker's life: SIGTERM (the launcher starts it again, and it sends what
# was committed meanwhile), SIGKILL (crash-restart of the postmaster, nothing
# committed is lost), DROP EXTENSION under it (it waits, no crash loop, and
# resumes after CREATE EXTENSION), signal tables dropped or truncated under
# it (no error loop, other tables unaffected), and a fast shutdown that is
# quick whether the worker is idle or backing off.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);
use SignalBusTest;

my $QM = '080.main';
my $QD = '080.dropped';
my $QT = '080.truncated';
my $QO = '080.other';

my $node = new_node(
	'lifecycle',
	flush_interval => '1s',
	'signalbus.max_backoff' => '2s',
	# PostgreSQL::Test::Cluster turns it off; the SIGKILL case needs it
	restart_after_crash => 'on');
$node->start;
declare_queue($_) for $QM, $QD, $QT, $QO;

# signalbus_status is a view of the extension: read it from a database that
# keeps the extension (and has no worker) while postgres drops it
$node->safe_psql('postgres', 'CREATE DATABASE mon');
$node->safe_psql('mon', 'CREATE EXTENSION signalbus');

sub status { return worker_status($node, $_[0], 'mon') }

sub wait_status { return wait_worker_status($node, $_[0], $_[1], $_[2] // 60, 'mon') }

# ids received from queue $q (waits for $n messages), sorted numerically
sub ids_from
{
	my ($q, $n, $timeout) = @_;
	my $m = get_messages($q, count => $n, timeout => $timeout // 30);
	return join(',', sort { $a <=> $b } map { body_json($_)->{id} } @$m);
}





$node->safe_psql('postgres', qq{
	CREATE EXTENSION signalbus;
	CREATE TABLE s080 (id int PRIMARY KEY, v text);
	SELECT signalbus_register('s080', routing_key => '$QM');
});
wait_status("state = 'idle' AND pid IS NOT NULL", 'worker idle');

# --- SIGTERM ---------------------------------------------------------------
my $pid1 = status('pid');
is($node->safe_psql('postgres', "SELECT pg_terminate_backend($pid1, 10000)"),
	't', 'worker terminated (pg_terminate_backend waits for its exit)');
$node->safe_psql('postgres',
	"INSERT INTO s080 SELECT g, 'after sigterm' FROM generate_series(1, 10) g");
note 'status right after the commit: ' . status('state, coalesce(pid::text, \'-\')');
wait_status("pid IS NOT NULL AND pid <> $pid1", 'the launcher starts a new worker');
is(ids_from($QM, 10), join(',', 1 .. 10),
	'rows committed while the worker was down are sent (start-up sweep)');
ok(wait_for_sql($node, 'SELECT count(*) FROM s080', '0'), 'table drained');

# --- SIGKILL: crash-restart -------------------------------------------------
wait_status("state = 'idle'", 'worker idle before SIGKILL');
my $offset = -s $node->logfile;
my $pid2 = freeze_worker($node, 'mon');
# queued for a worker that will never pop them
$node->safe_psql('postgres',
	"INSERT INTO s080 SELECT g, 'before sigkill' FROM generate_series(11, 20) g");
is(status('queued'), '10', 'rows queued for the frozen worker');
kill 'KILL', $pid2;
thaw_worker();    # (it is dead: this only forgets it)
# the server is unavailable for a moment: retry through connection failures
my $newpid = wait_new_worker($node, $pid2, 'mon');
like($newpid, qr/^\d+$/, 'after the crash-restart a new worker runs');
like(
	slurp_file($node->logfile, $offset),
	qr/all server processes terminated; reinitializing/,
	'the postmaster did a crash-restart');
is(ids_from($QM, 10), join(',', 11 .. 20),
	'every row committed before the crash is sent after it');
ok(wait_for_sql($node, 'SELECT count(*) FROM s080', '0'), 'table drained');
$node->safe_psql('postgres', q{INSERT INTO s080 VALUES (21, 'after crash')});
is(ids_from($QM, 1), '21', 'fast path works after the crash-restart');

# --- DROP EXTENSION under the running worker ---------------------------------
wait_status("state = 'idle'", 'worker idle before DROP EXTENSION');
my $pid3 = status('pid');
$offset = -s $node->logfile;
$node->safe_psql('postgres', 'DROP EXTENSION signalbus CASCADE');
wait_status("state = 'waiting for extension'",
	'after DROP EXTENSION: state "waiting for extension"', 30);
is(status('pid'), $pid3, 'same worker');
$node->safe_psql('postgres',
	"INSERT INTO s080 SELECT g, 'no extension' FROM generate_series(22, 25) g");
my @l1 = worker_log_lines($node, $offset);
sleep 3;    # three flush intervals
my @l2 = worker_log_lines($node, $offset);
is(status('state || \' \' || pid'), "waiting for extension $pid3",
	'still waiting, same pid after 3 s (no crash loop)');
note "worker log lines after DROP EXTENSION:\n" . join("\n", @l2);
is(scalar @l2, scalar @l1, 'no new worker log lines while it waits (no error loop)');
cmp_ok(scalar @l2, '<=', 1, 'at most one worker log line about the drop');
is(queue_length($QM), 0, 'nothing sent without the extension');

$node->safe_psql('postgres', qq{
	CREATE EXTENSION signalbus;
	SELECT signalbus_register('s080', routing_key => '$QM');
});
is(ids_from($QM, 4), '22,23,24,25',
	'after CREATE EXTENSION + register the rows left in the table are sent');
$node->safe_psql('postgres', q{INSERT INTO s080 VALUES (26, 'again')});
is(ids_from($QM, 1), '26', 'and new rows too');
ok(wait_for_sql($node, 'SELECT count(*) FROM s080', '0'), 'table drained');
wait_status("state = 'idle' AND pid = $pid3", 'worker idle, same pid');

# --- signal tables dropped and truncated while registered -----------------------
$node->safe_psql('postgres', qq{
	CREATE TABLE s080d (id int PRIMARY KEY);
	SELECT signalbus_register('s080d', routing_key => '$QD');
	CREATE TABLE s080t (id int PRIMARY KEY);
	SELECT signalbus_register('s080t', routing_key => '$QT');
	CREATE TABLE s080o (id int PRIMARY KEY);
	SELECT signalbus_register('s080o', routing_key => '$QO');
});
wait_status("state = 'idle'", 'worker idle with the new tables');
$offset = -s $node->logfile;
my $err_before = status('coalesce(last_error_at::text, \'-\')');
my $pid4 = freeze_worker($node, 'mon');
$node->safe_psql('postgres', q{
	INSERT INTO s080d SELECT g FROM generate_series(1, 5) g;
	INSERT INTO s080t SELECT g FROM generate_series(1, 5) g;
	INSERT INTO s080o SELECT g FROM generate_series(1, 5) g;
});
is(status('queued'), '15', '15 rows queued for the frozen worker');
$node->safe_psql('postgres', q{
	SET lock_timeout = '10s';
	DROP TABLE s080d;
	TRUNCATE s080t;
	INSERT INTO s080t VALUES (101), (102), (103);
});
thaw_worker();
is(ids_from($QO, 5), '1,2,3,4,5', 'the other table\'s rows arrive');
is(ids_from($QT, 3), '101,102,103',
	'rows inserted after TRUNCATE arrive (the queued ctids now point at them)');
ok(wait_for_sql($node, 'SELECT count(*) FROM s080t', '0'), 'truncated table drained');
ok(wait_for_sql($node, 'SELECT count(*) FROM s080o', '0'), 'other table drained');
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM signalbus_signals WHERE signal::text = 's080d'"),
	'0',
	'DROP TABLE removed the registration');
sleep 2.5;    # a couple of sweeps
is(queue_length($QT), 0, 'no truncated row was ever sent');
is(queue_length($QD), 0, 'nothing of the dropped table was sent');
my @lines = worker_log_lines($node, $offset);
note "worker log lines after DROP/TRUNCATE:\n" . join("\n", @lines);
cmp_ok(scalar @lines, '<=', 1, 'no error loop in the log');
my $err_at_1 = status('coalesce(last_error_at::text, \'-\')');
sleep 2.5;
is(status('coalesce(last_error_at::text, \'-\')'), $err_at_1,
	'no error repeats in signalbus_status');
note "last_error before: $err_before, after: $err_at_1 ("
  . status('coalesce(last_error, \'-\')') . ')';
is(status('pid'), $pid4, 'same worker throughout');
$node->safe_psql('postgres', q{
	INSERT INTO s080t VALUES (104);
	INSERT INTO s080o VALUES (6);
});
is(ids_from($QT, 1) . '|' . ids_from($QO, 1), '104|6',
	'both remaining tables keep sending');

# --- fast shutdown ------------------------------------------------------------
wait_status("state = 'idle'", 'worker idle before shutdown');
my $t0 = time;
$node->stop('fast');
my $dt = time - $t0;
note sprintf 'pg_ctl stop -m fast with an idle worker: %.2f s', $dt;
cmp_ok($dt, '<', 5, 'fast shutdown with an idle worker is quick');

$node->start;
wait_status("state = 'idle'", 'worker idle after restart');
broker_stop();
$node->safe_psql('postgres', q{INSERT INTO s080o VALUES (7)});
wait_status("state = 'backoff'", 'worker in backoff (broker stopped)');
$t0 = time;
$node->stop('fast');
$dt = time - $t0;
note sprintf 'pg_ctl stop -m fast with a worker in backoff: %.2f s', $dt;
cmp_ok($dt, '<', 5, 'fast shutdown with a worker in backoff is quick');
broker_start();

$node->start;
is(ids_from($QO, 1), '7', 'the row left pending at shutdown is sent after restart');
ok(wait_for_sql($node, 'SELECT count(*) FROM s080o', '0'), 'table drained');

$node->stop;
done_testing();
