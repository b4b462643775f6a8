
# Broker outage: committed rows stay pending while RabbitMQ is down, the
# worker backs off (logging the failure once, not once per retry),
# signalbus_flush() fails with 08001 and deletes nothing; once the broker is
# back every row arrives and the table drains.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);
use SignalBusTest;

my $Q = '030.outage';
my $N = 20;

my $node = new_node(
	'outage',
	flush_interval => '500ms',
	'signalbus.max_backoff' => '2s');
$node->start;
declare_queue($Q);    # durable: it survives broker_stop()/broker_start()

$node->safe_psql('postgres', qq{
	CREATE EXTENSION signalbus;
	CREATE TABLE s030 (id int PRIMARY KEY, v text);
	SELECT signalbus_register('s030', routing_key => '$Q');
});

# a row goes through while the broker is up: the worker is connected
$node->safe_psql('postgres', q{INSERT INTO s030 VALUES (0, 'before')});
my $m = get_messages($Q, count => 1, timeout => 30);
is(scalar @$m, 1, 'row committed before the outage arrives')
  or diag explain $m;
ok(wait_for_sql($node, 'SELECT count(*) FROM s030', '0'),
	'table drained before the outage');

# number of worker failure lines in the server log after byte offset $from
sub failure_lines
{
	my ($from) = @_;
	my $log = slurp_file($node->logfile, $from);
	my @lines = grep {
		/LOG:\s+signalbus worker for database "postgres": /
		  && !/reachable again/
	} split /\n/, $log;
	return @lines;
}

# wait up to $timeout s for $re in the server log after byte $from
sub wait_log
{
	my ($re, $from, $timeout) = @_;
	my $deadline = time + ($timeout // 30);
	while (time < $deadline)
	{
		return 1 if slurp_file($node->logfile, $from) =~ $re;
		sleep 0.1;
	}
	diag "log after offset $from has no match for $re";
	return 0;
}

# --- outage --------------------------------------------------------------
my $log_offset = -s $node->logfile;
broker_stop();
my $t_stop = time;

for my $batch (0 .. 3)
{
	my $lo = 1 + $batch * 5;
	my $hi = $lo + 4;
	$node->safe_psql('postgres',
		"INSERT INTO s030 SELECT g, 'during' FROM generate_series($lo, $hi) g");
}
is($node->safe_psql('postgres', 'SELECT count(*) FROM s030'),
	$N, "$N rows committed during the outage");

ok( $node->poll_query_until(
		'postgres',
		"SELECT state = 'backoff' FROM signalbus_status WHERE database = 'postgres'"),
	'worker state is backoff');
my $st = $node->safe_psql('postgres',
	"SELECT last_error, next_attempt_at IS NOT NULL, last_error_at IS NOT NULL
	   FROM signalbus_status WHERE database = 'postgres'");
note "status at the first backoff: $st";
like($st, qr/\|t\|t$/, 'next_attempt_at and last_error_at are set in backoff');
# the first failure is the publish on the dead connection; the reconnection
# attempts that follow name the broker
my $port = $ENV{SB_AMQP_PORT};
ok( $node->poll_query_until(
		'postgres',
		"SELECT last_error LIKE 'could not connect to AMQP broker at amqp://guest\@localhost:$port/%'
		   FROM signalbus_status WHERE database = 'postgres'"),
	'last_error names the broker it cannot reach');
my $last_error = $node->safe_psql('postgres',
	"SELECT last_error FROM signalbus_status WHERE database = 'postgres'");
note "last_error: $last_error";
# the node's listener is closed: the reason must say so (not a stale errno)
like($last_error, qr/refused/i, 'last_error gives the real reason (connection refused)');

# signalbus_flush() from a backend: 08001, nothing deleted
my ($stdout, $stderr) = ('', '');
$node->psql(
	'postgres',
	"\\set VERBOSITY verbose\nSELECT signalbus_flush();",
	stdout => \$stdout,
	stderr => \$stderr);
note "signalbus_flush() during outage: $stderr";
like($stderr, qr/ERROR:\s+08001:/, 'signalbus_flush() fails with SQLSTATE 08001');
like($stderr, qr/could not connect to AMQP broker/,
	'signalbus_flush() says it could not connect');
like($stderr, qr/refused/i,
	'signalbus_flush() gives the real reason (connection refused)');
unlike($stderr, qr/guest:guest/, 'the error does not show the password');
($stdout, $stderr) = ('', '');
$node->psql(
	'postgres',
	"\\set VERBOSITY verbose\nSELECT signalbus_flush('s030');",
	stdout => \$stdout,
	stderr => \$stderr);
like($stderr, qr/ERROR:\s+08001:/,
	'signalbus_flush(table) fails with SQLSTATE 08001 too');
is($node->safe_psql('postgres', 'SELECT count(*) FROM s030'),
	$N, 'the failed flush deleted nothing');

# let the outage last: the worker retries several times (backoff <= 2 s)
my $err_at_1 = $node->safe_psql('postgres',
	"SELECT last_error_at FROM signalbus_status WHERE database = 'postgres'");
sleep(6 - (time - $t_stop)) if time - $t_stop < 6;
my $err_at_2 = $node->safe_psql('postgres',
	"SELECT last_error_at FROM signalbus_status WHERE database = 'postgres'");
isnt($err_at_2, $err_at_1,
	'the worker kept retrying during the outage (last_error_at moved)');
is($node->safe_psql('postgres', 'SELECT count(*) FROM s030'),
	$N, 'rows still pending after ~6 s of outage');
is( $node->safe_psql(
		'postgres', "SELECT state FROM signalbus_status WHERE database = 'postgres'"),
	'backoff',
	'still in backoff');

my @fail = failure_lines($log_offset);
note "failure lines logged during the outage:\n" . join("\n", @fail);
cmp_ok(scalar @fail, '>=', 1, 'the failure is logged');
cmp_ok(scalar @fail, '<=', 2,
	'the failure is logged once per change of state, not once per retry');
unlike(slurp_file($node->logfile, $log_offset), qr/guest:guest/,
	'the log never shows the password');

# --- recovery ------------------------------------------------------------
$log_offset = -s $node->logfile;
broker_start();
ok(wait_for_sql($node, 'SELECT count(*) FROM s030', '0', 30),
	'table drained after the broker came back');
my $msgs = get_messages($Q, count => $N, timeout => 30);
# anything beyond N (duplicates) is already in the queue: rows are deleted
# only after the broker confirmed them
push @$msgs, @{ get_messages($Q) };
my %seen;
$seen{ body_json($_)->{id} }++ for @$msgs;
my @missing = grep { !$seen{$_} } 1 .. $N;
is("@missing", '', "every row 1..$N arrived at least once")
  or diag 'broker held ids: ' . join(',', sort { $a <=> $b } keys %seen);
my @dups = grep { $seen{$_} > 1 } sort { $a <=> $b } keys %seen;
note 'messages received: ' . scalar(@$msgs) . '; duplicated ids: '
  . (@dups ? join(',', map { "$_ x$seen{$_}" } @dups) : 'none');
my @extra = grep { $_ < 1 || $_ > $N } keys %seen;
is("@extra", '', 'no unexpected ids (row 0 was not sent again)');

ok( $node->poll_query_until(
		'postgres',
		"SELECT state = 'idle' FROM signalbus_status WHERE database = 'postgres'"),
	'worker back to idle');
ok( wait_log(
		qr{signalbus worker for database "postgres"(?: connected to|: broker at) amqp://guest\@localhost:$port/%2f},
		$log_offset),
	'the log says the worker reconnected');
is( $node->safe_psql(
		'postgres',
		"SELECT sent >= $N + 1 FROM signalbus_status WHERE database = 'postgres'"),
	't',
	'status.sent counts the rows');

# a row after recovery takes the fast path again
$node->safe_psql('postgres', q{INSERT INTO s030 VALUES (100, 'after')});
$m = get_messages($Q, count => 1, timeout => 30);
is(scalar(@$m) && body_json($m->[0])->{id}, 100, 'a new row is sent after recovery');

$node->stop;
done_testing();
