# 210_flushmany.pl -- CALL signalbus_flushmany() on a huge backlog.
#
# signalbus_flushmany() commits after every burst (burst_count rows), locks
# FOR UPDATE SKIP LOCKED with keyset pagination by ctid, and reports
# progress as a NOTICE at most every 10 s plus a final
#   signalbus_flushmany: table "t": N sent in S s (R/s)
# Everything runs in a database that has no worker (signalbus.databases
# names only 'postgres'), so the explicit flushes are the only senders.
#
#  (a) a backlog of SB_TEST_FLUSHMANY_ROWS rows (default 200,000; the
#      issue's 1,000,000 takes over a minute here, run it on demand with
#      SB_TEST_FLUSHMANY_ROWS=1000000) flushed by three sessions in
#      parallel: every row reaches the broker exactly once (all messages are
#      read back and every id checked), the table is drained, the three
#      final NOTICEs add up to the backlog, and each backend's private
#      memory stays flat during the run;
#  (b) the progress NOTICE of a run that lasts over 10 s (a lock held by
#      another session holds up its first burst), and only one of it;
#  (c) inside a transaction block (or any atomic context) it fails with
#      SQLSTATE 2D000 and sends nothing; from a DO block it runs;
#  (d) with the broker stopped it fails with 08001 and the rows stay; once
#      the broker is back, CALL signalbus_flushmany() sends them.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use IPC::Run;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep time);
use SignalBusTest;

my $N = $ENV{SB_TEST_FLUSHMANY_ROWS} // 200_000;
die "SB_TEST_FLUSHMANY_ROWS must be a positive integer\n" unless $N =~ /^[1-9]\d*$/;
my $SESSIONS = 3;
# bound on the growth of a backend's private memory (RssAnon) during the run
my $MEM_BOUND_KB = 5 * 1024;

my $QA = 'q210_many';
my $QP = 'q210_progress';
my $QC = 'q210_xact';
my $QD = 'q210_broker';
declare_queue($_) for ($QA, $QP, $QC, $QD);

my $DB = 'fm210';
my $node = new_node('flushmany210', databases => 'postgres', flush_interval => '1h');
$node->start;
$node->safe_psql('postgres', "CREATE DATABASE $DB");
$node->safe_psql($DB, qq{
	CREATE EXTENSION signalbus;
	-- body: the id as text (a generated column), so messages are small
	CREATE TABLE s210 (id bigint PRIMARY KEY,
	                   body text GENERATED ALWAYS AS (id::text) STORED);
	SELECT signalbus_register('s210', routing_key => '$QA', autoflush => false);
});

my $tmp = PostgreSQL::Test::Utils::tempdir;
my $psql = $node->installed_command('psql');

# --- helpers ---------------------------------------------------------------

# A consumer that reads a queue with basic.consume (amqp-dump's basic.get
# reads ~6,000 messages/s here: 1M messages would take minutes).  It prints
# every body on a line of its own; built with the same compiler and library
# as t/amqp_dump.c.  Falls back to amqp-dump if it cannot be built.
my $consumer = "$tmp/consume";
{
	open my $fh, '>', "$consumer.c" or die "$consumer.c: $!";
	print $fh <<'EOC';
/* consume URL QUEUE EXPECT IDLE_MS TIMEOUT_S: basic.consume (no-ack) from
 * QUEUE, print each message body on a line, until EXPECT messages arrived
 * and then none for IDLE_MS, or TIMEOUT_S passed. */
#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

static void die(const char *what) { fprintf(stderr, "consume: %s\n", what); exit(1); }

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	amqp_connection_state_t conn;
	amqp_socket_t *sock;
	struct amqp_connection_info ci;
	long expect, idle_ms, count = 0;
	double deadline;

	if (argc != 6)
		die("usage: consume URL QUEUE EXPECT IDLE_MS TIMEOUT_S");
	expect = atol(argv[3]);
	idle_ms = atol(argv[4]);
	deadline = now() + atof(argv[5]);
	if (amqp_parse_url(strdup(argv[1]), &ci) != AMQP_STATUS_OK)
		die("bad URL");
	conn = amqp_new_connection();
	if (!(sock = amqp_tcp_socket_new(conn)) ||
		amqp_socket_open(sock, ci.host, ci.port) != AMQP_STATUS_OK)
		die("cannot connect");
	if (amqp_login(conn, ci.vhost, 0, 131072, 0, AMQP_SASL_METHOD_PLAIN,
				   ci.user, ci.password).reply_type != AMQP_RESPONSE_NORMAL)
		die("login failed");
	amqp_channel_open(conn, 1);
	if (amqp_get_rpc_reply(conn).reply_type != AMQP_RESPONSE_NORMAL)
		die("channel.open failed");
	amqp_basic_consume(conn, 1, amqp_cstring_bytes(argv[2]), amqp_empty_bytes,
					   0, 1, 0, amqp_empty_table);
	if (amqp_get_rpc_reply(conn).reply_type != AMQP_RESPONSE_NORMAL)
		die("basic.consume failed");
	for (;;)
	{
		amqp_envelope_t env;
		amqp_rpc_reply_t r;
		struct timeval tv;
		double left = deadline - now();
		long ms = count >= expect ? idle_ms : (left < 1 ? (long) (left * 1000) : 1000);

		if (left <= 0)
			break;
		if (ms < 1)
			ms = 1;
		tv.tv_sec = ms / 1000;
		tv.tv_usec = (ms % 1000) * 1000;
		amqp_maybe_release_buffers(conn);
		r = amqp_consume_message(conn, &env, &tv, 0);
		if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
			r.library_error == AMQP_STATUS_TIMEOUT)
		{
			if (count >= expect)
				break;
			continue;
		}
		if (r.reply_type != AMQP_RESPONSE_NORMAL)
			die("consume failed");
		fwrite(env.message.body.bytes, 1, env.message.body.len, stdout);
		putchar('\n');
		count++;
		amqp_destroy_envelope(&env);
	}
	fprintf(stderr, "consume: %ld message(s)\n", count);
	return 0;
}
EOC
	close $fh;
	my ($out, $err) = ('', '');
	IPC::Run::run([ 'cc', '-O2', '-o', $consumer, "$consumer.c", '-lrabbitmq' ],
		'<', \undef, '>', \$out, '2>', \$err);
	if ($? != 0)
	{
		note "could not build the consumer, reading with amqp-dump: $err";
		$consumer = undef;
	}
}

# The bodies (ids) of every message in $queue: waits for $n, then takes the
# rest too (1 s without a message ends the read).
sub read_ids
{
	my ($queue, $n, $timeout) = @_;
	my ($out, $err) = ('', '');
	if ($consumer)
	{
		IPC::Run::run([ $consumer, amqp_url(), $queue, $n, 1000, $timeout ],
			'<', \undef, '>', \$out, '2>', \$err)
		  or die "consume $queue: $err";
		return [ split /\n/, $out ];
	}
	IPC::Run::run([ $ENV{SB_AMQP_DUMP}, '--url', amqp_url(), '--queue', $queue,
			'--count', $n, '--wait', $timeout ],
		'<', \undef, '>', \$out, '2>', \$err);
	die "amqp-dump $queue: $err" if $? >> 8 == 1;
	my @ids = $out =~ /"body":"(\d+)"/g;
	push @ids, @{ read_ids($queue, 0, 1) } if $n > 0;
	return \@ids;
}

# Check that @$ids holds every id of 1..$n exactly once.
sub check_exactly_once
{
	my ($ids, $n, $what) = @_;
	my $seen = '';
	my ($dups, $bad) = (0, 0);
	my (@dup_ex, @bad_ex);
	for my $id (@$ids)
	{
		if ($id !~ /^\d+$/ || $id < 1 || $id > $n)
		{
			$bad++;
			push @bad_ex, $id if @bad_ex < 5;
			next;
		}
		if (vec($seen, $id, 1))
		{
			$dups++;
			push @dup_ex, $id if @dup_ex < 5;
		}
		vec($seen, $id, 1) = 1;
	}
	my $distinct = unpack('%32b*', $seen);
	my @missing;
	if ($distinct < $n)
	{
		for my $id (1 .. $n)
		{
			next if vec($seen, $id, 1);
			push @missing, $id;
			last if @missing >= 5;
		}
	}
	is(scalar @$ids, $n, "$what: the broker received $n messages")
	  or diag 'broker held ' . scalar(@$ids) . " messages, expected $n";
	is($dups, 0, "$what: no id received twice")
	  or diag "$dups duplicate messages, e.g. ids @dup_ex";
	is($distinct, $n, "$what: every id 1..$n received")
	  or diag 'received ' . $distinct . " distinct ids; missing e.g. @missing";
	is($bad, 0, "$what: no foreign message") or diag "unexpected bodies: @bad_ex";
	return;
}

# Start psql on $DB running $sql from a file (no pumping needed), with
# application_name $app; returns [harness, stdout file, stderr file].
my $nscript = 0;

sub start_psql
{
	my ($sql, $app, $timeout) = @_;
	my $n = ++$nscript;
	my ($in, $out, $err) = map { "$tmp/psql$n.$_" } qw(sql out err);
	open my $fh, '>', $in or die "$in: $!";
	print $fh $sql;
	close $fh;
	my $h = IPC::Run::start(
		[ $psql, '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d',
			$node->connstr($DB) . " application_name=$app", '-f', $in ],
		'<', \undef, '>', $out, '2>', $err,
		IPC::Run::timeout($timeout // 180));
	return [ $h, $out, $err ];
}

sub finish_psql
{
	my ($p) = @_;
	my ($h, $out, $err) = @$p;
	my $ok = eval { $h->finish; 1 } && $h->result == 0;
	my $stderr = do { local (@ARGV, $/) = $err; <> } // '';
	return ($ok, $stderr);
}

# { VmRSS => kB, RssAnon => kB, RssShmem => kB } of process $pid, or undef
sub mem_of
{
	my ($pid) = @_;
	open my $fh, '<', "/proc/$pid/status" or return undef;
	my %m;
	while (my $line = <$fh>)
	{
		$m{$1} = $2 if $line =~ /^(VmRSS|RssAnon|RssShmem):\s+(\d+) kB/;
	}
	return defined $m{VmRSS} ? \%m : undef;
}

# SQLSTATE of a failed statement: psql with VERBOSITY verbose
sub sqlstate_of
{
	my ($sql) = @_;
	my ($out, $err) = ('', '');
	$node->psql($DB, "\\set VERBOSITY verbose\n$sql",
		stdout => \$out, stderr => \$err, on_error_stop => 1);
	return $err =~ /ERROR:\s+([0-9A-Z]{5}):/ ? ($1, $err) : ('', $err);
}

my $final_re = qr/NOTICE:  signalbus_flushmany: table "(\w+)": (\d+) sent in (\d+\.\d) s \((\d+)\/s\)/;
my $progress_re = qr/NOTICE:  signalbus_flushmany: table "(\w+)": (\d+) sent \((\d+)\/s\), about (\d+) left/;

# --- (a) a backlog of $N rows, three sessions in parallel --------------------

{
	my $t0 = time;
	$node->safe_psql($DB, "INSERT INTO s210 (id) SELECT g FROM generate_series(1, $N) g");
	note sprintf('(a) %d rows inserted in %.1f s', $N, time - $t0);

	my $timeout = 120 + $N / 1000;
	$t0 = time;
	my @s = map {
		start_psql("CALL signalbus_flushmany('s210');\n", "fm210_$_", $timeout)
	} 1 .. $SESSIONS;

	# the backends' pids, by application_name
	my %pid;
	my $deadline = time + 30;
	while (keys %pid < $SESSIONS && time < $deadline)
	{
		for (split /\n/, $node->safe_psql($DB, q{
			SELECT application_name, pid FROM pg_stat_activity
			WHERE application_name LIKE 'fm210\__' AND query LIKE 'CALL%'}))
		{
			my ($app, $pid) = split /\|/;
			$pid{$app} = $pid;
		}
		last if keys %pid == $SESSIONS;
		sleep 0.05;
	}
	is(scalar keys %pid, $SESSIONS, "(a) $SESSIONS sessions run CALL signalbus_flushmany()")
	  or diag 'found: ' . join(', ', map { "$_=$pid{$_}" } sort keys %pid);

	# Sample the backends' memory every 0.25 s while they run.  "early" is
	# the first sample once 10% of the backlog reached the broker (the
	# connection is up and the first bursts are over: steady state); "end"
	# is the last sample before the CALLs returned.  RssAnon (private
	# memory) is what a leak grows; VmRSS also counts the shared buffers a
	# backend touched, printed for information.
	my (%early, %end, %max_anon);
	my $apps = join(',', map { "'$_'" } sort keys %pid);
	while (time < $t0 + $timeout)
	{
		my %m = map { $_ => mem_of($pid{$_}) } keys %pid;
		my $running = $node->safe_psql($DB, qq{
			SELECT count(*) FROM pg_stat_activity
			WHERE application_name IN ($apps) AND state = 'active'});
		last if $running == 0;
		if (!%early && queue_length($QA) >= $N / 10)
		{
			%early = map { $_ => $m{$_} } grep { $m{$_} } keys %m;
		}
		if (%early)
		{
			for my $app (keys %m)
			{
				next unless $m{$app};
				$end{$app} = $m{$app};
				$max_anon{$app} = $m{$app}{RssAnon}
				  if ($max_anon{$app} // 0) < $m{$app}{RssAnon};
			}
		}
		sleep 0.25;
	}
	my @stderr;
	for my $i (0 .. $SESSIONS - 1)
	{
		my ($ok, $err) = finish_psql($s[$i]);
		ok($ok, "(a) session " . ($i + 1) . ': CALL signalbus_flushmany() succeeded')
		  or diag $err;
		push @stderr, $err;
	}
	my $elapsed = time - $t0;

	# the final NOTICEs
	my $total = 0;
	for my $i (0 .. $SESSIONS - 1)
	{
		my @final = $stderr[$i] =~ /$final_re/g;
		is(scalar(@final) / 4, 1, "(a) session " . ($i + 1) . ': one final NOTICE')
		  or diag "stderr: $stderr[$i]";
		next unless @final == 4;
		my ($table, $sent, $secs, $rate) = @final;
		is($table, 's210', "(a) session " . ($i + 1) . ': final NOTICE names the table');
		$total += $sent;
		ok($sent > 0, "(a) session " . ($i + 1) . " sent rows ($sent), in parallel");
		my @progress = $stderr[$i] =~ /$progress_re/g;
		my $nprogress = @progress / 4;
		ok($nprogress <= int($secs / 10),
			"(a) session " . ($i + 1) . ": $nprogress progress NOTICE(s) in $secs s: at most one per 10 s");
		note "(a) session " . ($i + 1) . ": $sent sent in $secs s ($rate/s), "
		  . "$nprogress progress NOTICE(s)";
	}
	is($total, $N, "(a) the final NOTICEs add up to the $N rows");
	note sprintf('(a) %d rows flushed by %d sessions in %.1f s: %.0f rows/s',
		$N, $SESSIONS, $elapsed, $N / $elapsed);

	is($node->safe_psql($DB, 'SELECT count(*) FROM s210'), '0', '(a) s210 is drained');
	is(queue_length($QA), $N, "(a) the queue holds $N messages");
	$t0 = time;
	my $ids = read_ids($QA, $N, 60 + $N / 2000);
	note sprintf('(a) %d messages read back in %.1f s', scalar @$ids, time - $t0);
	check_exactly_once($ids, $N, "(a) $N rows, $SESSIONS sessions");
	undef $ids;

	# memory
	ok(%early, '(a) memory sampled early in the run (10% of the backlog sent)');
	for my $app (sort keys %pid)
	{
		next unless $early{$app} && $end{$app};
		my ($e, $z) = ($early{$app}, $end{$app});
		note sprintf('(a) %s (pid %d): VmRSS %d -> %d kB, RssAnon %d -> %d kB '
			  . '(max %d), RssShmem %d -> %d kB',
			$app, $pid{$app}, $e->{VmRSS}, $z->{VmRSS}, $e->{RssAnon},
			$z->{RssAnon}, $max_anon{$app}, $e->{RssShmem} // 0,
			$z->{RssShmem} // 0);
		ok($max_anon{$app} - $e->{RssAnon} < $MEM_BOUND_KB,
			"(a) $app: private memory flat during the run (grew "
			  . ($max_anon{$app} - $e->{RssAnon}) . " kB, bound $MEM_BOUND_KB kB)");
	}
}

# --- (b) the progress NOTICE -------------------------------------------------

{
	$node->safe_psql($DB, qq{
		CREATE TABLE s210_p (id bigint PRIMARY KEY,
		                     body text GENERATED ALWAYS AS (id::text) STORED);
		SELECT signalbus_register('s210_p', routing_key => '$QP',
		                          autoflush => false, burst_count => 100);
		INSERT INTO s210_p (id) SELECT g FROM generate_series(1, 1000) g;
	});
	# SHARE conflicts with the ROW EXCLUSIVE lock a burst takes: the first
	# burst waits until this transaction ends, more than 10 s into the run.
	my $lock = $node->background_psql($DB);
	$lock->query_safe('BEGIN');
	$lock->query_safe('LOCK TABLE s210_p IN SHARE MODE');
	my $p = start_psql("CALL signalbus_flushmany('s210_p');\n", 'fm210_p', 120);
	ok( $node->poll_query_until($DB, q{
			SELECT now() - query_start > interval '10.3 s'
			FROM pg_stat_activity
			WHERE application_name = 'fm210_p' AND wait_event_type = 'Lock'}),
		'(b) the flush has waited more than 10 s for its first burst');
	$lock->query_safe('COMMIT');
	$lock->quit;
	my ($ok, $err) = finish_psql($p);
	ok($ok, '(b) CALL signalbus_flushmany() succeeded') or diag $err;
	my @progress = $err =~ /$progress_re/g;
	is_deeply(\@progress, [ 's210_p', 100, $progress[2] // 'R', 900 ],
		'(b) one progress NOTICE after the first burst: "100 sent (R/s), about 900 left"')
	  or diag "stderr: $err";
	like($err, qr/signalbus_flushmany: table "s210_p": 1000 sent in 1\d\.\d s \(\d+\/s\)/,
		'(b) final NOTICE: 1000 sent in 1x.x s');
	note "(b) NOTICEs: $err";
	is($node->safe_psql($DB, 'SELECT count(*) FROM s210_p'), '0', '(b) s210_p is drained');
	check_exactly_once(read_ids($QP, 1000, 30), 1000, '(b) 1,000 rows');
}

# --- (c) not inside a transaction block ---------------------------------------

{
	$node->safe_psql($DB, qq{
		CREATE TABLE s210_c (id bigint PRIMARY KEY,
		                     body text GENERATED ALWAYS AS (id::text) STORED);
		SELECT signalbus_register('s210_c', routing_key => '$QC', autoflush => false);
		INSERT INTO s210_c (id) SELECT g FROM generate_series(1, 5) g;
		CREATE FUNCTION f210() RETURNS void LANGUAGE plpgsql
		AS \$\$ BEGIN CALL signalbus_flushmany('s210_c'); END \$\$;
	});
	my ($state, $err) = sqlstate_of(
		"BEGIN;\nCALL signalbus_flushmany('s210_c');\nROLLBACK;\n");
	is($state, '2D000', '(c) BEGIN; CALL signalbus_flushmany(); fails with 2D000')
	  or diag "stderr: $err";
	like($err, qr/transaction block/, '(c) ... saying it cannot run in a transaction block');
	($state, $err) = sqlstate_of('SELECT f210();');
	is($state, '2D000', '(c) CALL from a function (atomic context) fails with 2D000')
	  or diag "stderr: $err";
	($state, $err) = sqlstate_of(
		"BEGIN;\nDO \$\$ BEGIN CALL signalbus_flushmany('s210_c'); END \$\$;\nROLLBACK;\n");
	is($state, '2D000', '(c) DO block inside a transaction block: 2D000')
	  or diag "stderr: $err";
	is($node->safe_psql($DB, 'SELECT count(*) FROM s210_c'), '5',
		'(c) the rows are still there');
	is(queue_length($QC), 0, '(c) nothing was sent');

	# outside a transaction block, a DO block may CALL it (non-atomic)
	$node->safe_psql($DB, q{DO $$ BEGIN CALL signalbus_flushmany('s210_c'); END $$});
	is($node->safe_psql($DB, 'SELECT count(*) FROM s210_c'), '0',
		'(c) CALL from a top-level DO block runs: s210_c is drained');
	check_exactly_once(read_ids($QC, 5, 30), 5, '(c) DO block');
}

# --- (d) the broker stopped ----------------------------------------------------

{
	$node->safe_psql($DB, qq{
		CREATE TABLE s210_d (id bigint PRIMARY KEY,
		                     body text GENERATED ALWAYS AS (id::text) STORED);
		SELECT signalbus_register('s210_d', routing_key => '$QD', autoflush => false);
		INSERT INTO s210_d (id) SELECT g FROM generate_series(1, 50) g;
	});
	broker_stop();
	my ($state, $err) = sqlstate_of("CALL signalbus_flushmany('s210_d');");
	is($state, '08001', '(d) broker stopped: CALL signalbus_flushmany() fails with 08001')
	  or diag "stderr: $err";
	is($node->safe_psql($DB, 'SELECT count(*) FROM s210_d'), '50',
		'(d) the 50 rows stay');
	broker_start();
	is(queue_length($QD), 0, '(d) nothing reached the broker');

	# CALL without an argument: every signal table of the database
	my ($out, $err2) = ('', '');
	$node->psql($DB, 'CALL signalbus_flushmany()', stdout => \$out, stderr => \$err2);
	like($err2, qr/table "s210_d": 50 sent in/,
		'(d) broker back: CALL signalbus_flushmany() sends the 50 rows');
	is($node->safe_psql($DB, 'SELECT coalesce(sum(pending), 0) FROM signalbus_pending'),
		'0', '(d) no signal table holds a pending row');
	check_exactly_once(read_ids($QD, 50, 30), 50, '(d) after the broker came back');
}

is(queue_length($_), 0, "queue $_ is empty at the end") for ($QA, $QP, $QC, $QD);

$node->stop;
done_testing();
