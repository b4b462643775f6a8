
# PostgreSQL-side faults while the worker drains thousands of rows: the
# worker killed with SIGKILL (crash-restart of the postmaster), an immediate
# shutdown holding a backlog, long transactions holding row locks on some
# signal rows (the others must flow past them; for an order_by table too:
# its locked row may hold back that table, never the other tables), and a
# signal table dropped, truncated or altered while the worker serves it.
# After each: every committed id arrived at least once, the table is empty,
# nothing went to signalbus_dead_letters (signalbus.max_attempts is 1: a
# fault must never count against a row), and the duplicates are counted.
#
# An AFTER DELETE statement trigger that sleeps paces the drain (the worker
# deletes each confirmed burst), so that a fault reliably lands mid-drain;
# it is dropped once the fault has landed.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);
use SignalBusTest;

my $node = new_node(
	'faults_pg',
	flush_interval => '1s',
	'signalbus.max_backoff' => '2s',
	'signalbus.max_attempts' => 1,
	# PostgreSQL::Test::Cluster turns it off; the SIGKILL case needs it
	restart_after_crash => 'on');
$node->start;
$node->safe_psql('postgres', q{
	CREATE EXTENSION signalbus;
	CREATE FUNCTION pace() RETURNS trigger LANGUAGE plpgsql
	  AS $$BEGIN PERFORM pg_catalog.pg_sleep(TG_ARGV[0]::float8); RETURN NULL; END$$;
});

# psql that retries while the server is restarting
sub sql_retry { return query_retry($node, @_) }

sub status { return worker_status($node, @_) }

sub wait_status { return wait_worker_status($node, @_) }

sub pending
{
	my ($table) = @_;
	return sql_retry("SELECT count(*) FROM $table");
}

sub make_table
{
	my ($table, $queue, $burst, $pace, $columns, %reg) = @_;
	declare_queue($queue);
	my $opts = join '', map { ", $_ => $reg{$_}" } sort keys %reg;
	$node->safe_psql('postgres', qq{
		CREATE TABLE $table (id int PRIMARY KEY, v text@{[ $columns ? ", $columns" : '' ]});
		SELECT signalbus_register('$table', routing_key => '$queue',
		                          burst_count => $burst$opts);
	});
	$node->safe_psql('postgres',
		"CREATE TRIGGER pace AFTER DELETE ON $table FOR EACH STATEMENT EXECUTE FUNCTION pace('$pace')"
	) if $pace;
	return;
}

sub unpace
{
	my ($table) = @_;
	sql_retry("SET lock_timeout = '20s'; DROP TRIGGER IF EXISTS pace ON $table");
	return;
}

sub insert_ids
{
	my ($table, $lo, $hi) = @_;
	sql_retry("INSERT INTO $table (id, v) SELECT g, 'x' FROM generate_series($lo, $hi) g");
	return;
}

sub wait_below { return wait_rows_below($node, @_) }

sub drained
{
	my ($table, $what, $timeout) = @_;
	return ok(wait_for_sql($node, "SELECT count(*) FROM $table", '0', $timeout // 60),
		"$what: table drained");
}

sub dead_letters
{
	return sql_retry('SELECT count(*) FROM signalbus_dead_letters');
}






my %report;
my $N = 6000;

# --- 1. the worker killed with SIGKILL mid-drain -------------------------------------
{
	my ($T, $Q) = ('s310a', '310.kill');
	make_table($T, $Q, 75, 0.05);
	wait_status("state = 'idle'", 'worker idle before the burst');
	my $offset = -s $node->logfile;
	insert_ids($T, 1, $N);
	wait_below($T, $N * 0.8);
	my $pid = status('pid');
	kill 'KILL', $pid or die "kill -KILL $pid: $!";
	my $t0 = time;
	my $newpid = wait_new_worker($node, $pid);
	like($newpid, qr/^\d+$/, 'after the crash-restart a new worker runs');
	like(slurp_file($node->logfile, $offset),
		qr/signalbus worker.*\(PID $pid\) was terminated by signal 9/,
		'the postmaster saw the worker die of SIGKILL');
	my $left = pending($T);
	cmp_ok($left, '>', 0, "SIGKILL landed mid-drain ($left of $N rows pending)");
	unpace($T);
	insert_ids($T, $N + 1, $N + 500);
	drained($T, 'worker SIGKILL');
	$report{worker_sigkill} = sprintf '%.1f s from SIGKILL to drained', time - $t0;
	my (undef, $m) = check_arrived($Q, [ 1 .. $N + 500 ], 'worker SIGKILL mid-drain');
	$report{worker_sigkill} .= ', ' . (@$m - $N - 500) . ' duplicates';
	is(dead_letters(), '0', 'worker SIGKILL: no row dead-lettered');
}

# --- 2. immediate shutdown holding a backlog ----------------------------------------
{
	my ($T, $Q) = ('s310b', '310.immediate');
	make_table($T, $Q, 75, 0.05);
	wait_status("state = 'idle'", 'worker idle before the burst');
	insert_ids($T, 1, $N);
	wait_below($T, $N * 0.8);
	$node->stop('immediate');
	my $t0 = time;
	$node->start;
	my $left = pending($T);
	cmp_ok($left, '>', 0, "pg_ctl stop -m immediate left a backlog ($left of $N rows)");
	unpace($T);
	drained($T, 'immediate shutdown');
	$report{immediate} = sprintf '%.1f s from the shutdown to drained', time - $t0;
	my (undef, $m) = check_arrived($Q, [ 1 .. $N ], 'immediate shutdown mid-drain');
	$report{immediate} .= ', ' . (@$m - $N) . ' duplicates';
	is(dead_letters(), '0', 'immediate shutdown: no row dead-lettered');
}

# --- 3. long transactions holding row locks --------------------------------------------
{
	my ($T, $Q) = ('s310c', '310.locked');
	make_table($T, $Q, 1000, 0);
	wait_status("state = 'idle'", 'worker idle');

	# committed rows queued for the (frozen) worker; two sessions lock some
	freeze_worker($node);
	insert_ids($T, 1, 1005);
	my $s1 = $node->background_psql('postgres');
	my $s2 = $node->background_psql('postgres');
	$s1->query_safe("BEGIN; SELECT id FROM $T WHERE id <= 3 FOR UPDATE");
	$s2->query_safe("BEGIN; SELECT id FROM $T WHERE id IN (4, 5) FOR UPDATE");
	thaw_worker();
	my $offset = -s $node->logfile;

	my $m = get_messages($Q, count => 1000, timeout => 30);
	my %got = map { body_json($_)->{id} => 1 } @$m;
	is(scalar(grep { $got{$_} } 6 .. 1005), 1000,
		'the 1000 unlocked rows flow past the 5 locked ones');
	is(join(',', grep { $got{$_} } 1 .. 5), '', 'no locked row was sent');
	ok(wait_for_sql($node, "SELECT string_agg(id::text, ',' ORDER BY id) FROM $T", '1,2,3,4,5'),
		'only the locked rows are left');

	# new rows keep flowing while the locks are held, over several sweeps
	insert_ids($T, 1006, 1105);
	$m = get_messages($Q, count => 100, timeout => 30);
	is(scalar(@$m), 100, 'rows committed while the locks are held arrive');
	sleep 2.5;    # two or three sweeps meet the locked rows
	is(queue_length($Q), 0, 'the sweeps skip the locked rows (nothing else sent)');
	isnt(status('state'), 'backoff', 'the worker is not backing off');
	is(scalar(worker_log_lines($node, $offset)), 0, 'no worker log line about the locked rows');

	my $t0 = time;
	$s1->query_safe('COMMIT');
	$m = get_messages($Q, count => 3, timeout => 30);
	is(join(',', sort map { body_json($_)->{id} } @$m), '1,2,3',
		'rows 1-3 are sent once their locker commits');
	$s2->query_safe('ROLLBACK');
	$m = get_messages($Q, count => 2, timeout => 30);
	is(join(',', sort map { body_json($_)->{id} } @$m), '4,5',
		'rows 4-5 are sent once their locker rolls back');
	drained($T, 'lock holders');
	$report{locks} = sprintf '%.1f s from the release to drained', time - $t0;
	$s1->quit;
	$s2->quit;
}

# --- 3b. a locked row of an order_by table -------------------------------------------
# The ordered table must wait for its locked row (order), but the worker
# serves every table of the database: the others must keep flowing.
{
	my ($TO, $QO) = ('s310o', '310.ordered');
	my ($TN, $QN) = ('s310n', '310.neighbour');
	make_table($TO, $QO, 1000, 0, undef, order_by => "'id'");
	make_table($TN, $QN, 1000, 0);
	insert_ids($TO, 1, 10);
	is(join(',', map { body_json($_)->{id} } @{ get_messages($QO, count => 10, timeout => 30) }),
		join(',', 1 .. 10), 'the ordered table sends in order');
	drained($TO, 'ordered table before the lock');
	wait_status("state = 'idle'", 'worker idle');

	freeze_worker($node);
	insert_ids($TO, 11, 20);
	my $s = $node->background_psql('postgres');
	$s->query_safe("BEGIN; SELECT id FROM $TO WHERE id = 11 FOR UPDATE");
	thaw_worker();
	sleep 2.5;    # two or three sweeps meet the locked row
	note 'worker wait event with row 11 locked: ' . $node->safe_psql('postgres', q{
		SELECT coalesce(a.wait_event_type || ':' || a.wait_event, 'running')
		  FROM signalbus_status s JOIN pg_stat_activity a ON a.pid = s.pid
		 WHERE s.database = 'postgres'});

	my $t0 = time;
	insert_ids($TN, 1, 100);
	my $m = get_messages($QN, count => 100, timeout => 10);
	my $dt = time - $t0;
	my %gotn = map { body_json($_)->{id} => 1 } @$m;
	is(scalar(keys %gotn), 100,
		sprintf('rows of another table flow while a row of an ordered table is locked (%d of 100 in %.1f s)',
			scalar(keys %gotn), $dt));
	my $waits = $node->safe_psql('postgres', q{
		SELECT coalesce(string_agg(a.wait_event_type || ':' || a.wait_event, ','), 'none')
		  FROM signalbus_status s JOIN pg_stat_activity a ON a.pid = s.pid
		 WHERE s.database = 'postgres' AND a.wait_event_type = 'Lock'});
	note "worker lock waits while row 11 is locked: $waits";
	is(queue_length($QO), 0, 'the ordered table sends nothing past its locked row');

	$s->query_safe('ROLLBACK');
	$s->quit;
	$m = get_messages($QO, count => 10, timeout => 30);
	is(join(',', map { body_json($_)->{id} } @$m), join(',', 11 .. 20),
		'after the lock is released the ordered rows go, in order');
	if (keys %gotn < 100)
	{
		my $rest = get_messages($QN, count => 100 - keys %gotn, timeout => 30);
		$gotn{ body_json($_)->{id} } = 1 for @$rest;
	}
	is(scalar(keys %gotn), 100, 'every row of the other table arrived in the end');
	drained($TO, 'ordered table');
	drained($TN, 'neighbour table');
}

# --- 3c. a long transaction holding a table lock on one signal table -------------------
# (SHARE mode is what a plain CREATE INDEX holds for its whole run): that
# table cannot be sent meanwhile, but the other tables must keep flowing.
{
	my ($TL, $QL) = ('s310l', '310.tablelocked');
	my ($TN, $QN) = ('s310n', '310.neighbour');
	make_table($TL, $QL, 1000, 0);
	insert_ids($TL, 1, 10);
	is(scalar(@{ get_messages($QL, count => 10, timeout => 30) }), 10,
		'the table sends before it is locked');
	drained($TL, 'table lock: before the lock');
	my $s = $node->background_psql('postgres');
	$s->query_safe("BEGIN; LOCK TABLE $TL IN SHARE MODE");
	sleep 2.5;    # two or three sweeps meet the locked table
	note 'worker wait event with the table locked: ' . $node->safe_psql('postgres', q{
		SELECT coalesce(a.wait_event_type || ':' || a.wait_event, 'running')
		  FROM signalbus_status s JOIN pg_stat_activity a ON a.pid = s.pid
		 WHERE s.database = 'postgres'});
	my $t0 = time;
	insert_ids($TN, 101, 200);
	my $m = get_messages($QN, count => 100, timeout => 10);
	my %got = map { body_json($_)->{id} => 1 } @$m;
	is(scalar(keys %got), 100,
		sprintf('rows of another table flow while a signal table is locked in SHARE mode (%d of 100 in %.1f s)',
			scalar(keys %got), time - $t0));
	$s->query_safe('COMMIT');
	$s->quit;
	if (keys %got < 100)
	{
		my $rest = get_messages($QN, count => 100 - keys %got, timeout => 30);
		$got{ body_json($_)->{id} } = 1 for @$rest;
	}
	is(scalar(keys %got), 100, 'every row of the other table arrived in the end');
	drained($TN, 'table lock: neighbour table');
}

# --- 4. signal tables dropped, truncated or altered while the worker serves them -------
my ($TX, $QX) = ('s310x', '310.other');
make_table($TX, $QX, 1000, 0);
my $x_next = 1;

# rows of the unaffected table still go
sub other_table_flows
{
	my ($what) = @_;
	my ($lo, $hi) = ($x_next, $x_next + 99);
	$x_next += 100;
	insert_ids($TX, $lo, $hi);
	my $m = get_messages($QX, count => 100, timeout => 20);
	is(join(',', sort { $a <=> $b } map { body_json($_)->{id} } @$m),
		join(',', $lo .. $hi), "$what: another table keeps sending");
	return;
}

my $N4 = 4000;
my $pid_before = status('pid');

# 4a. DROP TABLE mid-drain
{
	my ($T, $Q) = ('s310d', '310.dropped');
	make_table($T, $Q, 75, 0.05);
	wait_status("state = 'idle'", 'worker idle');
	my $offset = -s $node->logfile;
	insert_ids($T, 1, $N4);
	my $left = wait_below($T, $N4 * 0.8);
	$node->safe_psql('postgres', "SET lock_timeout = '20s'; DROP TABLE $T");
	ok($left > 0, "DROP TABLE mid-drain (about $left rows left)");
	other_table_flows('DROP TABLE');
	my $m = get_messages($Q);
	my @bad = grep { my $id = body_json($_)->{id}; $id < 1 || $id > $N4 } @$m;
	is(scalar(@bad), 0, 'DROP TABLE: what was sent of the dropped table is its own rows ('
		  . scalar(@$m) . ' messages)');
	sleep 1.5;    # a sweep after the drop
	my @lines = worker_log_lines($node, $offset);
	note "worker log lines after DROP TABLE:\n" . join("\n", @lines);
	cmp_ok(scalar(@lines), '<=', 1, 'DROP TABLE: no error loop in the log');
}

# 4b. TRUNCATE mid-drain, then new rows
{
	my ($T, $Q) = ('s310t', '310.truncated');
	make_table($T, $Q, 75, 0.05);
	wait_status("state = 'idle'", 'worker idle');
	my $offset = -s $node->logfile;
	insert_ids($T, 1, $N4);
	my $left = wait_below($T, $N4 * 0.8);
	$node->safe_psql('postgres', "SET lock_timeout = '20s'; TRUNCATE $T");
	ok($left > 0, "TRUNCATE mid-drain (about $left rows left)");
	my $sent_before = queue_length($Q);
	unpace($T);
	insert_ids($T, 100001, 100100);
	drained($T, 'TRUNCATE');
	my $m = get_messages($Q, count => $sent_before + 100, timeout => 30);
	push @$m, @{ get_messages($Q) };
	my %seen;
	$seen{ body_json($_)->{id} }++ for @$m;
	is(scalar(grep { $seen{$_} } 100001 .. 100100), 100,
		'TRUNCATE: every row inserted after it arrived');
	is(scalar(grep { $_ > $N4 && $_ <= 100000 || $_ > 100100 } keys %seen), 0,
		'TRUNCATE: no unexpected id');
	note 'TRUNCATE: ' . scalar(grep { $_ <= $N4 } keys %seen)
	  . " of the $N4 truncated rows had been sent before it";
	other_table_flows('TRUNCATE');
	my @lines = worker_log_lines($node, $offset);
	cmp_ok(scalar(@lines), '<=', 1, 'TRUNCATE: no error loop in the log')
	  or diag join("\n", @lines);
}

# 4c. ADD COLUMN mid-drain
{
	my ($T, $Q) = ('s310e', '310.extended');
	make_table($T, $Q, 75, 0.05);
	wait_status("state = 'idle'", 'worker idle');
	insert_ids($T, 1, $N4);
	my $left = wait_below($T, $N4 * 0.8);
	$node->safe_psql('postgres',
		"SET lock_timeout = '20s'; ALTER TABLE $T ADD COLUMN extra text DEFAULT 'added'");
	ok($left > 0, "ADD COLUMN mid-drain (about $left rows left)");
	$node->safe_psql('postgres',
		"INSERT INTO $T (id, v, extra) SELECT g, 'x', 'new' FROM generate_series($N4 + 1, $N4 + 100) g");
	unpace($T);
	drained($T, 'ADD COLUMN');
	my (undef, $m) = check_arrived($Q, [ 1 .. $N4 + 100 ], 'ADD COLUMN mid-drain');
	my @wrong = grep {
		my $b = body_json($_);
		$b->{id} > $N4
		  ? ($b->{extra} // '') ne 'new'
		  : exists $b->{extra} && $b->{extra} ne 'added'
	} @$m;
	is(scalar(@wrong), 0,
		'ADD COLUMN: rows sent after it carry the new column (its default, or the value set)');
	note 'ADD COLUMN: ' . scalar(grep { exists body_json($_)->{extra} } @$m)
	  . ' messages carry the new column';
}

# 4d. a special column altered to a wrong type mid-drain, then back
{
	my ($T, $Q) = ('s310p', '310.priority');
	make_table($T, $Q, 75, 0.05, 'priority int');
	wait_status("state = 'idle'", 'worker idle');
	$node->safe_psql('postgres',
		"INSERT INTO $T SELECT g, 'x', g % 10 FROM generate_series(1, $N4) g");
	my $left = wait_below($T, $N4 * 0.8);
	my $offset = -s $node->logfile;
	$node->safe_psql('postgres',
		"SET lock_timeout = '20s'; ALTER TABLE $T ALTER COLUMN priority TYPE text");
	unpace($T);
	ok($left > 0, "priority altered to text mid-drain (about $left rows left)");
	ok( wait_for_sql(
			$node,
			"SELECT last_error ~ '$T' AND last_error ~ 'priority' FROM signalbus_status WHERE database = 'postgres'",
			't', 20),
		'the reason is in signalbus_status.last_error');
	note 'last_error: ' . status('last_error');
	my $p1 = pending($T);
	cmp_ok($p1, '>', 0, "the table's rows stay ($p1)");
	other_table_flows('priority altered to text');
	sleep 2;    # two sweeps
	is(pending($T), $p1, 'the table stays stopped while the type is wrong');
	my @lines = worker_log_lines($node, $offset);
	note "worker log lines:\n" . join("\n", @lines);
	cmp_ok(scalar(grep { /priority/ } @lines), '<=', 1,
		'the wrong type is logged once, not once per sweep');
	isnt(status('state'), 'backoff', 'the broker connection is not blamed');

	my $t0 = time;
	$node->safe_psql('postgres',
		"SET lock_timeout = '20s'; ALTER TABLE $T ALTER COLUMN priority TYPE int USING priority::int");
	drained($T, 'priority altered back');
	$report{alter_back} = sprintf '%.1f s from altering the type back to drained', time - $t0;
	my (undef, $m) = check_arrived($Q, [ 1 .. $N4 ], 'priority altered to text and back');
	my @wrong = grep { ($_->{properties}{priority} // -1) != body_json($_)->{id} % 10 } @$m;
	is(scalar(@wrong), 0, 'every message carries its row\'s priority');
	other_table_flows('priority altered back');
}

is(status('pid'), $pid_before, 'one worker served all the DDL cases');
drained($TX, 'other table');
is(dead_letters(), '0', 'no row dead-lettered');

my $log = slurp_file($node->logfile);
my @crashes = grep { /terminated by signal/ } split /\n/, $log;
is(scalar(@crashes), 1, 'the only process that died by a signal is the worker killed on purpose')
  or diag join("\n", @crashes);
note "recovery: $_: $report{$_}" for sort keys %report;

$node->stop;
done_testing();
