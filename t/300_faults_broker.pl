
# Broker faults while the worker drains thousands of rows: the RabbitMQ
# application stopped (stop_app) and started again; the node killed with
# SIGKILL and restarted; every connection closed by the broker five times;
# a memory alarm (connection.blocked) during which the worker must give up
# its burst, release its row locks and still obey SIGTERM.  After each fault:
# every committed id arrived at least once, the table is empty, nothing went
# to signalbus_dead_letters (signalbus.max_attempts is 1 here: a broker
# failure must never count against a row), and the duplicates are counted.
#
# An AFTER DELETE statement trigger that sleeps paces the drain (the worker
# deletes each confirmed burst), so that a fault reliably lands mid-drain on
# a fast or a slow machine.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Utils;
use Test::More;
use File::Temp qw(tempdir);
use IO::Socket::IP;
use Time::HiRes qw(time sleep);
use SignalBusTest;

my $node = new_node(
	'faults_broker',
	flush_interval => '1s',
	'signalbus.max_backoff' => '2s',
	'signalbus.confirm_timeout' => '2s',
	'signalbus.max_attempts' => 1);
$node->start;
$node->safe_psql('postgres', q{
	CREATE EXTENSION signalbus;
	CREATE FUNCTION pace() RETURNS trigger LANGUAGE plpgsql
	  AS $$BEGIN PERFORM pg_catalog.pg_sleep(TG_ARGV[0]::float8); RETURN NULL; END$$;
});

sub status { return worker_status($node, @_) }

sub wait_status { return wait_worker_status($node, @_) }

sub pending
{
	my ($table) = @_;
	return $node->safe_psql('postgres', "SELECT count(*) FROM $table");
}

# a signal table whose worker deletes take $pace seconds per burst
sub make_table
{
	my ($table, $queue, $burst, $pace) = @_;
	declare_queue($queue);    # durable: survives stop_app and a restart
	$node->safe_psql('postgres', qq{
		CREATE TABLE $table (id int PRIMARY KEY, v text);
		SELECT signalbus_register('$table', routing_key => '$queue',
		                          burst_count => $burst);
	});
	$node->safe_psql('postgres',
		"CREATE TRIGGER pace AFTER DELETE ON $table FOR EACH STATEMENT EXECUTE FUNCTION pace('$pace')"
	) if $pace;
	return;
}

sub insert_ids
{
	my ($table, $lo, $hi) = @_;
	$node->safe_psql('postgres',
		"INSERT INTO $table SELECT g, 'x' FROM generate_series($lo, $hi) g");
	return;
}

sub wait_below { return wait_rows_below($node, @_) }

sub dead_letters
{
	return $node->safe_psql('postgres',
		'SELECT count(*) FROM signalbus_dead_letters');
}


sub broker_port_open
{
	my $s = IO::Socket::IP->new(
		PeerHost => 'localhost',
		PeerPort => $ENV{SB_AMQP_PORT},
		Timeout => 2);
	return 0 unless $s;
	close $s;
	return 1;
}

# the drain is paced only until the fault has landed: recovery at full speed
sub unpace
{
	my ($table) = @_;
	$node->safe_psql('postgres', "DROP TRIGGER IF EXISTS pace ON $table");
	return;
}

my %report;
my $N = 6000;

# --- 1. stop_app during a burst, then start_app --------------------------------
{
	my ($T, $Q) = ('s300a', '300.stop');
	make_table($T, $Q, 75, 0.05);
	wait_status("state = 'idle'", 'worker idle before the burst');
	insert_ids($T, 1, $N);
	wait_below($T, $N * 0.8);
	broker_stop();
	my $left = pending($T);
	cmp_ok($left, '>', 0, "stop_app landed mid-drain ($left of $N rows pending)");
	unpace($T);
	insert_ids($T, $N + 1, $N + 500);    # committed during the outage
	wait_status("state = 'backoff'", 'worker backs off while the broker is down');
	my $p1 = pending($T);
	sleep 1;                             # nothing may be deleted meanwhile
	is(pending($T), $p1, "no row deleted while the broker is down ($p1 pending)");
	note 'last_error during the outage: ' . status('last_error');

	broker_start();
	my $t0 = time;
	ok(wait_for_sql($node, "SELECT count(*) FROM $T", '0', 60),
		'table drained after start_app');
	$report{stop_app} = sprintf '%.1f s', time - $t0;
	note "stop_app: drained $report{stop_app} after start_app";
	my ($d) = check_arrived($Q, [ 1 .. $N + 500 ], 'stop_app during a burst');
	$report{stop_app} .= ", $d duplicates";
	is(dead_letters(), '0', 'stop_app: no row dead-lettered (an outage is not the row\'s fault)');
}

# --- 2. the broker node killed with SIGKILL mid-drain, then restarted ----------------
#
# The node runs as the rabbitmq user and the TAP tests as postgres, which can
# neither signal it nor start it (scripts/rabbitmq.sh start needs root).  The
# node's own Erlang VM does both: through rabbitmqctl eval it spawns (setsid)
# a shell as rabbitmq with the node's environment, which kills the VM with
# SIGKILL, waits for a trigger file this test creates, and starts the node
# again exactly as scripts/rabbitmq.sh did (same environment, same
# rabbitmq-server -detached).  It restarts the node by itself after 90 s if
# the trigger never comes, so a dying test never leaves later tests without
# a broker.
my $RMQ_DIR = "$ENV{SB_RUN_DIR}/rabbitmq-$ENV{SB_AMQP_PORT}";
my $trigger_dir = tempdir('sb300XXXX', TMPDIR => 1, CLEANUP => 1);
chmod 0755, $trigger_dir;
my $restart_trigger = "$trigger_dir/restart";
my $broker_killed = 0;

sub kill9_broker
{
	my $sh =
	    'sleep 0.2; kill -9 BEAMPID; rm -f $RABBITMQ_PID_FILE; i=0; '
	  . "while [ ! -e $restart_trigger ] && [ \$i -lt 900 ]; do sleep 0.1; i=\$((i+1)); done; "
	  . 'cd $HOME; exec /usr/lib/rabbitmq/bin/rabbitmq-server -detached';
	my ($pre, $post) = split /BEAMPID/, $sh;
	my $erl =
	    qq{Pid = os:getpid(), os:cmd("setsid sh -c '$pre" ++ Pid ++ "$post' }
	  . qq{>>\$RABBITMQ_LOG_BASE/sb300-restart.log 2>&1 </dev/null &"), Pid.};
	my $out = broker_ctl('-q', 'eval', $erl);
	$broker_killed = 1;
	my ($pid) = $out =~ /"(\d+)"/;
	die "kill9_broker: no pid in: $out" unless $pid;
	return $pid;
}

sub restart_killed_broker
{
	open my $fh, '>', $restart_trigger or die "$restart_trigger: $!";
	close $fh;
	broker_ctl('-q', 'wait', "$RMQ_DIR/pid", '--timeout', '60');
	my $deadline = time + 60;
	sleep 0.1 until broker_port_open() || time > $deadline;
	$broker_killed = 0;
	return;
}

END
{
	if ($broker_killed)
	{
		local $?;
		eval { restart_killed_broker() };
	}
}

{
	my ($T, $Q) = ('s300b', '300.kill');
	make_table($T, $Q, 75, 0.05);
	wait_status("state = 'idle'", 'worker idle before the burst');
	my $pidfile_pid = slurp_file("$RMQ_DIR/pid");
	chomp $pidfile_pid;
	insert_ids($T, 1, $N);
	wait_below($T, $N * 0.8);
	my $beam = kill9_broker();
	is($beam, $pidfile_pid, "the VM that kills itself is the node of the pid file ($beam)");
	my $deadline = time + 30;
	sleep 0.05 while -d "/proc/$beam" && time < $deadline;
	ok(!-d "/proc/$beam", "beam.smp $beam is gone (SIGKILL)");
	my $left = pending($T);
	cmp_ok($left, '>', 0, "SIGKILL landed mid-drain ($left of $N rows pending)");
	ok(!broker_port_open(), 'the AMQP port refuses connections');
	unpace($T);
	insert_ids($T, $N + 1, $N + 500);
	wait_status("state = 'backoff'", 'worker backs off while the node is dead');
	note 'last_error with the node dead: ' . status('last_error');

	my $t0 = time;
	restart_killed_broker();
	note sprintf 'node restarted in %.1f s', time - $t0;
	my $t1 = time;
	ok(wait_for_sql($node, "SELECT count(*) FROM $T", '0', 60),
		'table drained after the node restarted');
	$report{kill9} = sprintf '%.1f s', time - $t1;
	note "SIGKILL: drained $report{kill9} after the node was back";
	my ($d) = check_arrived($Q, [ 1 .. $N + 500 ], 'broker SIGKILL mid-drain');
	$report{kill9} .= ", $d duplicates";
	is(dead_letters(), '0', 'SIGKILL: no row dead-lettered');
}

# --- 3. the broker closes every connection, five times during a drain --------------
{
	my ($T, $Q) = ('s300c', '300.close');
	my $n = 10000;
	make_table($T, $Q, 100, 0.1);
	wait_status("state = 'idle'", 'worker idle before the burst');
	insert_ids($T, 1, $n);
	wait_below($T, $n - 200);
	my $closes = 0;
	my @errors;
	for my $i (1 .. 5)
	{
		last unless wait_status("state = 'sending'", "close $i: worker sending");
		my $err_at = status("coalesce(last_error_at::text, '-')");
		last if pending($T) == 0;
		broker_ctl('-q', 'close_all_connections', 'test');
		my $left = pending($T);
		next unless $left > 0;
		ok( wait_for_sql(
				$node,
				"SELECT coalesce(last_error_at::text, '-') <> '$err_at' FROM signalbus_status WHERE database = 'postgres'"
			),
			"close $i: the worker noticed ($left rows pending)")
		  or next;
		$closes++;
		push @errors, status('last_error');
	}
	is($closes, 5, 'five closes landed mid-drain and were noticed');
	unpace($T);
	note "last_error after each close:\n" . join("\n", @errors);
	my $t0 = time;
	ok(wait_for_sql($node, "SELECT count(*) FROM $T", '0', 60), 'table drained');
	$report{close} = sprintf '%.1f s after the last close', time - $t0;
	my ($d) = check_arrived($Q, [ 1 .. $n ], 'close_all_connections x5');
	$report{close} .= ", $d duplicates";
	is(dead_letters(), '0', 'close_all_connections: no row dead-lettered');
}

# --- 4. memory alarm: connection.blocked -------------------------------------------
#
# RabbitMQ under a resource alarm stops reading from publishing connections
# (and tells clients that announce the "connection.blocked" capability).
# The worker must give up the burst (confirm_timeout is 2 s here, socket
# writes time out after 10 s), release its row locks, keep retrying, obey
# SIGTERM, and send everything once the alarm clears.  4a: bursts small
# enough to fit in the socket buffers; 4b: a burst of 8 MB, which does not.
my $watermark;
my $alarm_on = 0;

sub clear_alarm
{
	broker_ctl('-q', 'set_vm_memory_high_watermark', $watermark);
	$alarm_on = 0;
}

END
{
	if ($alarm_on)
	{
		local $?;
		eval { clear_alarm() };
	}
}

# every pending row of $table can be locked FOR UPDATE NOWAIT by another session
sub rows_lockable
{
	my ($table, $timeout) = @_;
	return wait_for_sql($node,
		qq{DO \$\$BEGIN PERFORM FROM $table FOR UPDATE NOWAIT; END\$\$; SELECT 'ok'},
		'ok', $timeout);
}

# SIGTERM the worker; returns (pg_terminate_backend's result, seconds, pid)
sub terminate_worker
{
	my $pid = status('pid');
	my $t0 = time;
	my $r = $node->safe_psql('postgres', "SELECT pg_terminate_backend($pid, 15000)");
	return ($r, time - $t0, $pid);
}

sub set_alarm
{
	$alarm_on = 1;
	broker_ctl('-q', 'set_vm_memory_high_watermark', '0.0000001');
	my $deadline = time + 30;
	my $alarms = '';
	while (time < $deadline)
	{
		$alarms = broker_ctl('-q', 'eval', 'rabbit_alarm:get_alarms().');
		last if $alarms =~ /memory/;
		sleep 0.2;
	}
	return like($alarms, qr/memory/, 'the broker raised a memory alarm');
}

$watermark = broker_ctl('-q', 'eval',
	'vm_memory_monitor:get_vm_memory_high_watermark().');
chomp $watermark;
note "broker's vm_memory_high_watermark: $watermark";
$watermark = '0.4' unless $watermark =~ /^\d*\.?\d+$/;

# 4a. bursts small enough for the socket buffers
{
	my ($T, $Q) = ('s300d', '300.alarm');
	my $n = 3000;
	make_table($T, $Q, 1000, 0);
	wait_status("state = 'idle'", '4a: worker idle before the alarm');
	set_alarm();
	insert_ids($T, 1, $n);
	my $t_insert = time;
	ok( $node->poll_query_until(
			'postgres',
			"SELECT last_error ~ '(block|resource alarm|timed out)' AND state = 'backoff'
			   FROM signalbus_status WHERE database = 'postgres'"),
		'4a: the worker gives up the blocked burst and backs off');
	note sprintf '4a: gave up %.1f s after the commit; last_error: %s',
	  time - $t_insert, status('last_error');
	# RabbitMQ sends connection.blocked only to clients that announce the
	# "connection.blocked" capability in their client properties (librabbitmq
	# 0.11 announces only authentication_failure_close and
	# exchange_exchange_bindings by itself)
	ok( wait_for_sql(
			$node,
			"SELECT last_error ~* '(blocked|resource alarm)' FROM signalbus_status WHERE database = 'postgres'",
			't', 8),
		'4a: the worker learns of the alarm from the broker (connection.blocked), not only from a confirm timeout'
	);
	my $left = pending($T);
	cmp_ok($left, '>', 0, "4a: rows stay pending during the alarm ($left of $n)");
	ok(rows_lockable($T, 20),
		'4a: another session can SELECT ... FOR UPDATE NOWAIT every pending row');
	note '4a: worker log lines so far: ' . scalar(grep { /signalbus worker for database/ }
		  split /\n/, slurp_file($node->logfile));
	my $sending = wait_for_sql($node,
		"SELECT state FROM signalbus_status WHERE database = 'postgres'",
		'sending', 10);
	my ($r, $dt, $pid) = terminate_worker();
	is($r, 't', "4a: pg_terminate_backend($pid) returns true");
	cmp_ok($dt, '<', 5,
		sprintf('4a: the worker exits within 5 s of SIGTERM (%.1f s, state was %s)',
			$dt, $sending ? 'sending' : 'not sending'));
	wait_status("pid IS NOT NULL AND pid <> $pid", '4a: a new worker is started', 60);
	cmp_ok(pending($T), '>', 0, '4a: rows still pending while the alarm lasts');

	clear_alarm();
	my $t1 = time;
	ok(wait_for_sql($node, "SELECT count(*) FROM $T", '0', 60),
		'4a: table drained once the alarm cleared');
	$report{alarm_small} = sprintf '%.1f s after the alarm cleared', time - $t1;
	my ($d) = check_arrived($Q, [ 1 .. $n ], '4a: memory alarm, small bursts');
	$report{alarm_small} .= ", $d duplicates";
}

# 4b. one burst of 8 MB, more than the socket buffers hold: the write blocks.
# (librabbitmq 0.11 waits for a writable socket with poll() and no deadline
# in amqp_basic_publish, retrying on EINTR: SO_SNDTIMEO cannot bound that.)
# message_id carries the id, so that only the body is big.
{
	my ($T, $Q) = ('s300e', '300.alarm.big');
	my $n = 256;
	declare_queue($Q);
	$node->safe_psql('postgres', qq{
		CREATE TABLE $T (id int PRIMARY KEY, message_id text, body text);
		SELECT signalbus_register('$T', routing_key => '$Q');
	});
	wait_status("state = 'idle'", '4b: worker idle before the alarm');
	set_alarm();
	my $err_at = status("coalesce(last_error_at, '-infinity')");
	$node->safe_psql('postgres',
		"INSERT INTO $T SELECT g, g, repeat('y', 32768) FROM generate_series(1, $n) g");
	note '4b: ' . $n * 32 . ' kB committed in one burst';
	ok( wait_for_sql(
			$node,
			"SELECT state = 'sending' OR last_error_at > '$err_at' FROM signalbus_status WHERE database = 'postgres'",
			't', 10),
		'4b: the worker tries to send');
	ok(rows_lockable($T, 15),
		'4b: the worker gives up a blocked write and releases its row locks');
	note '4b: state ' . status("state || ', last_error: ' || coalesce(last_error, '-')");
	my $sending = wait_for_sql(
		$node,
		"SELECT state FROM signalbus_status WHERE database = 'postgres'",
		'sending', 10);
	my ($r, $dt, $pid) = terminate_worker();
	is($r, 't', "4b: pg_terminate_backend($pid) returns true (worker exited within 15 s)");
	cmp_ok($dt, '<', 12,
		sprintf('4b: the worker exits within the 10 s write timeout of SIGTERM (%.1f s, state was %s)',
			$dt, $sending ? 'sending' : 'not sending'));
	cmp_ok(pending($T), '>', 0, '4b: rows still pending while the alarm lasts');

	clear_alarm();
	my $t1 = time;
	ok(wait_for_sql($node, "SELECT count(*) FROM $T", '0', 60),
		'4b: table drained once the alarm cleared');
	$report{alarm_big} = sprintf '%.1f s after the alarm cleared', time - $t1;
	my $msgs = get_messages($Q, count => $n, timeout => 60);
	push @$msgs, @{ get_messages($Q) };
	my %seen;
	$seen{ $_->{properties}{message_id} // 'none' }++ for @$msgs;
	my @missing = grep { !$seen{$_} } 1 .. $n;
	is(scalar(@missing), 0,
		'4b: memory alarm, 8 MB burst: every committed id arrived (lost: '
		  . scalar(@missing) . ')')
	  or diag scalar(@$msgs) . " messages; missing: @missing";
	my $d = @$msgs - keys %seen;
	note "4b: memory alarm, 8 MB burst: " . scalar(@$msgs) . " messages for $n committed rows: $d duplicates";
	$report{alarm_big} .= ", $d duplicates";
}
is(dead_letters(), '0', 'memory alarm: no row dead-lettered');

# --- the server log: no crash, no flood --------------------------------------------
my $log = slurp_file($node->logfile);
unlike($log, qr/terminated by signal/, 'no process crashed');
my @worker_lines = worker_log_lines($node);
note scalar(@worker_lines) . " worker log lines in all:\n" . join("\n", @worker_lines);
cmp_ok(scalar @worker_lines, '<', 60, 'no log flood');
note "recovery: $_: $report{$_}" for sort keys %report;

$node->stop;
done_testing();
