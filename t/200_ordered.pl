# 200_ordered.pl -- tables registered with order_by (DESIGN.md §5).
#
# Such a table never uses the commit-time fast path: the worker sends it in
# sweeps (every signalbus.flush_interval, 200ms here), in order_by order,
# one ordered sender at a time, waiting for locked rows instead of skipping
# them.  §5 defines "in order": each flush sends the rows it can see in
# order_by order, and a later flush never sends a row that sorts before one
# an earlier flush already sent -- unless that row's transaction committed
# later.  So the order is total only when keys are assigned in commit order.
#
# Checked:
#  (a) 4 concurrent writers, 2,000 rows, keys assigned in commit order: the
#      queue holds every row once, in strictly increasing id order;
#  (b) the same while 2 more sessions call signalbus_flushordered() in a
#      loop, racing the worker;
#  (c) a writer that commits out of key order: the later key is sent first,
#      the earlier one after its commit -- what §5 allows, and only that;
#  (d) order_by => 'prio DESC, id' (with ties and NULLs, over several
#      bursts): the messages leave in exactly that order;
#  (e) a row locked by another transaction is not overtaken by the rows
#      behind it (the sender waits, not skips), and the rows then leave in
#      order; meanwhile the rows of other tables must keep flowing (an open
#      transaction on one ordered table must not stall every table of the
#      database);
#  (f) signalbus_flushordered() on a table without order_by sends in primary
#      key order (a database without a worker, so nothing races it);
#  (g) shortening signalbus.flush_interval with a reload takes effect at
#      once (a second node, started with 1h).
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use IPC::Run;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep time);
use SignalBusTest;

my %Q = map { $_ => "q200_$_" } qw(a b c d e f g);
declare_queue($_) for values %Q;

my $node = new_node('ordered200', flush_interval => '200ms');
$node->start;

$node->safe_psql('postgres', qq{
	CREATE EXTENSION signalbus;
	CREATE TABLE s200_a (id bigserial PRIMARY KEY, writer int, txn int, k int);
	SELECT signalbus_register('s200_a', routing_key => '$Q{a}',
	                          order_by => 'id', burst_count => 7);
	CREATE TABLE s200_b (id bigserial PRIMARY KEY, writer int, txn int, k int);
	SELECT signalbus_register('s200_b', routing_key => '$Q{b}',
	                          order_by => 'id', burst_count => 7);
	CREATE TABLE s200_b_done (done bool);
	CREATE TABLE s200_c (id bigserial PRIMARY KEY, tag text);
	SELECT signalbus_register('s200_c', routing_key => '$Q{c}', order_by => 'id');
	CREATE TABLE s200_d (id bigserial PRIMARY KEY, prio int, tag text);
	SELECT signalbus_register('s200_d', routing_key => '$Q{d}',
	                          order_by => 'prio DESC, id', burst_count => 3);
	CREATE TABLE s200_d_ref (id bigint, prio int, tag text);
	CREATE TABLE s200_e (id bigserial PRIMARY KEY, tag text);
	SELECT signalbus_register('s200_e', routing_key => '$Q{e}', order_by => 'id');
	CREATE TABLE s200_f (id bigserial PRIMARY KEY, tag text);
	SELECT signalbus_register('s200_f', routing_key => '$Q{f}');
});
is($node->safe_psql('postgres',
		q{SELECT order_by FROM signalbus_signals WHERE signal = 's200_d'::regclass}),
	'prio DESC, id', 'order_by is stored normalized');

# --- helpers ---------------------------------------------------------------

my $tmp = PostgreSQL::Test::Utils::tempdir;
my $psql = $node->installed_command('psql');
my $nscript = 0;

# Start psql running $sql (from a file, so every process runs on its own
# without being pumped); returns [harness, stdout file, stderr file].
sub start_psql
{
	my ($sql, $db) = @_;
	my $n = ++$nscript;
	my ($in, $out, $err) = map { "$tmp/psql$n.$_" } qw(sql out err);
	open my $fh, '>', $in or die "$in: $!";
	print $fh $sql;
	close $fh;
	my $h = IPC::Run::start(
		[ $psql, '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d',
			$node->connstr($db // 'postgres'), '-f', $in ],
		'<', \undef, '>', $out, '2>', $err,
		IPC::Run::timeout(120));
	return [ $h, $out, $err ];
}

# Wait for a start_psql process; true if it exited 0.  Returns (ok, stderr).
sub finish_psql
{
	my ($p) = @_;
	my ($h, $out, $err) = @$p;
	my $ok = eval { $h->finish; 1 } && $h->result == 0;
	my $stderr = do { local (@ARGV, $/) = $err; <> } // '';
	return ($ok, $stderr);
}

# A writer: $ntxn transactions of $nrows rows each.  Every transaction
# takes the same advisory lock before its INSERT and holds it to its
# COMMIT, so the ids (bigserial, drawn during the INSERT) are assigned in
# commit order: that is what makes §5's order total.  The short sleep keeps
# each transaction open across a little time, so that sweeps interleave.
sub writer_sql
{
	my ($table, $writer, $ntxn, $nrows) = @_;
	my $sql = '';
	for my $t (1 .. $ntxn)
	{
		$sql .= "BEGIN;\n"
		  . "SELECT pg_advisory_xact_lock(200200);\n"
		  . "INSERT INTO $table (writer, txn, k) "
		  . "SELECT $writer, $t, g FROM generate_series(1, $nrows) g;\n"
		  . "SELECT pg_sleep(0.003);\n"
		  . "COMMIT;\n";
	}
	return $sql;
}

# Read the messages of $queue: wait for $n, then take any extra ones too.
sub read_all
{
	my ($queue, $n, $timeout) = @_;
	my $msgs = get_messages($queue, count => $n, timeout => $timeout // 30);
	push @$msgs, @{ get_messages($queue) };
	return $msgs;
}

# Check that @$msgs (rows of a writer table) are every (writer, txn, k) of
# $nwriters x $ntxn x $nrows exactly once, in strictly increasing id order.
sub check_total_order
{
	my ($msgs, $nwriters, $ntxn, $nrows, $what) = @_;
	my $total = $nwriters * $ntxn * $nrows;
	my @rows = map { body_json($_) } @$msgs;
	is(scalar @rows, $total, "$what: the broker received $total messages")
	  or diag 'broker held ' . scalar(@rows) . " messages, expected $total";

	my %seen;
	$seen{"$_->{writer}/$_->{txn}/$_->{k}"}++ for @rows;
	my @dups = grep { $seen{$_} > 1 } sort keys %seen;
	my @missing;
	for my $w (1 .. $nwriters)
	{
		for my $t (1 .. $ntxn)
		{
			push @missing, grep { !$seen{$_} } map { "$w/$t/$_" } 1 .. $nrows;
		}
	}
	is_deeply([ @dups[ 0 .. ($#dups < 9 ? $#dups : 9) ] ], [],
		"$what: no row sent twice")
	  or diag scalar(@dups) . ' rows (writer/txn/k) received more than once';
	is(scalar @missing, 0, "$what: every row was sent")
	  or diag scalar(@missing) . ' rows missing, e.g. '
	  . join(', ', @missing[ 0 .. ($#missing < 9 ? $#missing : 9) ]);

	my @bad;
	for my $i (1 .. $#rows)
	{
		push @bad, $i if $rows[$i]{id} <= $rows[ $i - 1 ]{id};
	}
	is(scalar @bad, 0, "$what: ids strictly increasing in the queue")
	  or diag scalar(@bad) . ' order violations; first at message #'
	  . $bad[0] . ': ids ' . join(', ',
		map { $_->{id} } @rows[ ($bad[0] > 3 ? $bad[0] - 3 : 0)
		  .. ($bad[0] + 3 > $#rows ? $#rows : $bad[0] + 3) ]);
	return;
}

sub table_drained
{
	my ($table, $what, $db) = @_;
	ok(wait_for_sql($node, "SELECT count(*) FROM $table", '0', 30, $db),
		"$what: $table is drained");
}

# --- (a) 4 concurrent writers, the worker's sweeps only ---------------------

{
	my $t0 = time;
	my @w = map { start_psql(writer_sql('s200_a', $_, 50, 10)) } 1 .. 4;
	for my $i (0 .. 3)
	{
		my ($ok, $err) = finish_psql($w[$i]);
		ok($ok, "(a) writer " . ($i + 1) . " committed its 50 transactions")
		  or diag $err;
	}
	note sprintf('(a) writers done in %.1f s', time - $t0);
	my $msgs = read_all($Q{a}, 2000, 60);
	table_drained('s200_a', '(a) concurrent writers');
	push @$msgs, @{ get_messages($Q{a}) };
	check_total_order($msgs, 4, 50, 10, '(a) concurrent writers, worker');
}

# --- (b) the same, with 2 sessions flushing ordered in a loop --------------

{
	# Each flusher calls signalbus_flushordered() in its own transaction
	# until the writers are done and the table is empty (or 90 s passed),
	# and reports how many rows it sent.
	my $flusher = q{
		DO $$
		DECLARE
			n bigint := 0;
			calls int := 0;
			deadline timestamptz := clock_timestamp() + interval '90 s';
		BEGIN
			LOOP
				n := n + signalbus_flushordered('s200_b');
				calls := calls + 1;
				COMMIT;
				EXIT WHEN (EXISTS (SELECT FROM s200_b_done)
				           AND NOT EXISTS (SELECT FROM s200_b))
				       OR clock_timestamp() > deadline;
				PERFORM pg_sleep(0.01);
			END LOOP;
			RAISE NOTICE 'flusher: sent % in % calls', n, calls;
		END
		$$;
	};
	my $sent0 = $node->safe_psql('postgres', 'SELECT sent FROM signalbus_status');
	my @f = map { start_psql($flusher) } 1 .. 2;
	my @w = map { start_psql(writer_sql('s200_b', $_, 50, 10)) } 1 .. 4;
	for my $i (0 .. 3)
	{
		my ($ok, $err) = finish_psql($w[$i]);
		ok($ok, "(b) writer " . ($i + 1) . " committed its 50 transactions")
		  or diag $err;
	}
	$node->safe_psql('postgres', 'INSERT INTO s200_b_done VALUES (true)');
	my $by_flushers = 0;
	for my $i (0 .. 1)
	{
		my ($ok, $err) = finish_psql($f[$i]);
		ok($ok, "(b) flusher " . ($i + 1) . ' ran without error') or diag $err;
		if ($err =~ /flusher: sent (\d+) in (\d+) calls/)
		{
			$by_flushers += $1;
			note "(b) flusher " . ($i + 1) . ": sent $1 rows in $2 calls";
		}
	}
	my $msgs = read_all($Q{b}, 2000, 60);
	table_drained('s200_b', '(b) flushordered racing the worker');
	push @$msgs, @{ get_messages($Q{b}) };
	check_total_order($msgs, 4, 50, 10, '(b) flushordered racing the worker');
	ok($by_flushers > 0, '(b) the flushers did send rows (the race happened)');
	my $by_worker = 2000 - $by_flushers;
	ok(wait_for_sql($node, "SELECT sent - $sent0 FROM signalbus_status", $by_worker),
		"(b) the worker sent the other $by_worker rows (each row sent once)");
	note "(b) sent by the flushers: $by_flushers, by the worker: $by_worker";
}

# --- (c) a writer that commits out of key order -----------------------------

{
	my $t1 = $node->background_psql('postgres');
	$t1->query_safe('BEGIN');
	my $id1 = $t1->query_safe(q{INSERT INTO s200_c (tag) VALUES ('t1') RETURNING id});
	my $id2 = $node->safe_psql('postgres',
		q{INSERT INTO s200_c (tag) VALUES ('t2') RETURNING id});
	ok($id1 < $id2, "(c) T1 drew id $id1, T2 drew id $id2 and committed first");

	# A sweep sends what it can see: id 2, although id 1 sorts before it
	# (its transaction is still open, so no flush can see it).  Waiting for
	# T1 instead would hold the table up behind any open transaction.
	my $first = get_messages($Q{c}, count => 1, timeout => 30);
	is_deeply([ map { body_json($_)->{id} } @$first ], [$id2],
		'(c) while T1 is open, a sweep sends the committed id 2');

	$t1->query_safe('COMMIT');
	$t1->quit;
	# T1's row sorts before one already sent; §5 allows it to follow, as its
	# transaction committed later.  Both leave, each once.
	my $second = get_messages($Q{c}, count => 1, timeout => 30);
	is_deeply([ map { body_json($_)->{id} } @$second ], [$id1],
		'(c) after T1 commits, a later sweep sends id 1');
	$node->safe_psql('postgres', q{INSERT INTO s200_c (tag) VALUES ('marker')});
	my $rest = get_messages($Q{c}, count => 1, timeout => 30);
	is_deeply([ map { body_json($_)->{tag} } @$rest ], ['marker'],
		'(c) then only the next committed row arrives (no duplicate)');
	table_drained('s200_c', '(c) out-of-key-order commit');
	note "(c) order at the broker: $id2, $id1, marker "
	  . '(§5: allowed, T1 committed after T2)';
}

# --- (d) order_by => 'prio DESC, id' ----------------------------------------

{
	# 30 rows in one transaction, priorities with ties and NULLs; the
	# reference table gets the same rows for the expected order.
	$node->safe_psql('postgres', q{
		BEGIN;
		WITH r AS (
			INSERT INTO s200_d (prio, tag)
			SELECT CASE WHEN g % 7 = 0 THEN NULL ELSE (g * 37) % 5 END, 'd' || g
			FROM generate_series(1, 30) g
			RETURNING *)
		INSERT INTO s200_d_ref SELECT * FROM r;
		COMMIT;
	});
	my @want = split /\n/, $node->safe_psql('postgres',
		'SELECT id FROM s200_d_ref ORDER BY prio DESC, id');
	my $msgs = read_all($Q{d}, 30, 30);
	table_drained('s200_d', "(d) order_by 'prio DESC, id'");
	push @$msgs, @{ get_messages($Q{d}) };
	my @got = map { body_json($_)->{id} } @$msgs;
	is_deeply(\@got, \@want,
		"(d) messages in 'prio DESC, id' order (NULLs first), across bursts of 3")
	  or diag "broker order: @got\nexpected:     @want";
}

# --- (e) a locked row: the sender waits; other tables must not stall ---------

# the worker's wait event, for the log
sub worker_wait_event
{
	return $node->safe_psql('postgres', q{
		SELECT coalesce(a.wait_event_type || '/' || a.wait_event, 'none')
		FROM pg_stat_activity a JOIN signalbus_status s ON s.pid = a.pid});
}

{
	# Ordered senders of one table serialize, so a session that called
	# signalbus_flushordered() in a still open transaction keeps the worker
	# off s200_e: the rows are committed and e1 is locked before any
	# sender can see them.
	my $x = $node->background_psql('postgres');
	$x->query_safe('BEGIN');
	$x->query_safe(q{SELECT signalbus_flushordered('s200_e')});
	$node->safe_psql('postgres',
		q{INSERT INTO s200_e (tag) VALUES ('e1'), ('e2'), ('e3')});
	my $l = $node->background_psql('postgres');
	$l->query_safe('BEGIN');
	$l->query_safe(q{SELECT id FROM s200_e WHERE tag = 'e1' FOR UPDATE});
	sleep 1;    # 5 sweep intervals
	note '(e) worker wait event while a session holds the ordered-sender lock: '
	  . worker_wait_event();

	# That open transaction holds up s200_e; the other tables must still
	# be sent (here the fast path of an unordered table).
	$node->safe_psql('postgres', q{INSERT INTO s200_f (tag) VALUES ('f1')});
	my $f = get_messages($Q{f}, count => 1, timeout => 5);
	is(scalar @$f, 1,
		'(e) an open transaction holding the ordered-sender lock of one table '
		  . 'does not stall the other tables (fast-path row sent within 5 s)')
	  or diag 'the row of s200_f was not sent; worker wait event: '
	  . worker_wait_event();

	$x->query_safe('COMMIT');
	$x->quit;
	sleep 1;    # 5 sweep intervals: time enough to send e2, e3 wrongly
	note '(e) worker wait event while e1 is locked: ' . worker_wait_event();
	is(queue_length($Q{e}), 0,
		'(e) nothing of s200_e sent while e1 is locked (e2, e3 do not overtake it)');

	$node->safe_psql('postgres', q{INSERT INTO s200_f (tag) VALUES ('f2')});
	my $f2 = get_messages($Q{f}, count => @$f ? 1 : 2, timeout => 5);
	is(scalar(@$f2), @$f ? 1 : 2,
		'(e) a row lock on an ordered table does not stall the other tables '
		  . '(fast-path row sent within 5 s)')
	  or diag 's200_f rows not sent; worker wait event: ' . worker_wait_event();
	push @$f, @$f2;

	$l->query_safe('ROLLBACK');
	$l->quit;
	my $msgs = read_all($Q{e}, 3, 30);
	is_deeply([ map { body_json($_)->{tag} } @$msgs ], [qw(e1 e2 e3)],
		'(e) once the lock is gone, e1, e2, e3 leave in order, each once');
	table_drained('s200_e', '(e) locked row');
	push @$f, @{ read_all($Q{f}, 2 - @$f, 30) } if @$f < 2;
	is_deeply([ sort map { body_json($_)->{tag} } @$f ], [qw(f1 f2)],
		'(e) the other table\'s rows were all sent, once');
	table_drained('s200_f', '(e) the other table');
}

# --- (f) signalbus_flushordered() without order_by: primary key order --------

{
	# a database without a worker: only the explicit flush sends
	$node->safe_psql('postgres', 'CREATE DATABASE nw200');
	$node->safe_psql('nw200', qq{
		CREATE EXTENSION signalbus;
		CREATE TABLE s200_g (id int PRIMARY KEY, tag text);
		SELECT signalbus_register('s200_g', routing_key => '$Q{g}',
		                          burst_count => 4);
		-- physical (ctid) order differs from key order
		INSERT INTO s200_g
		SELECT id, 'g' || id FROM unnest('{7,3,11,1,9,5,2,10,4,8,6}'::int[]) id;
	});
	is($node->safe_psql('nw200', q{SELECT signalbus_flushordered('s200_g')}),
		'11', '(f) signalbus_flushordered() sent the 11 rows');
	my $msgs = read_all($Q{g}, 11, 30);
	is_deeply([ map { body_json($_)->{id} } @$msgs ], [ 1 .. 11 ],
		'(f) without order_by, signalbus_flushordered() sends in primary key order');
	table_drained('s200_g', '(f) flushordered by primary key', 'nw200');
}

is(queue_length($_), 0, "queue $_ is empty at the end") for sort values %Q;

$node->stop;

# --- (g) a shorter flush_interval, by reload, takes effect -------------------

# An ordered table is only sent by sweeps, so its latency is the
# flush_interval: shortening it with a reload must not wait for the sweep
# scheduled under the old, long interval.
{
	my $Qh = 'q200_h';
	declare_queue($Qh);
	my $n2 = new_node('ordered200_reload', flush_interval => '1h');
	$n2->start;
	$n2->safe_psql('postgres', qq{
		CREATE EXTENSION signalbus;
		CREATE TABLE s200_h (id bigserial PRIMARY KEY, tag text);
		SELECT signalbus_register('s200_h', routing_key => '$Qh', order_by => 'id');
	});
	# the start-up sweep is over: the next one is due in 1 h
	ok(wait_for_sql($n2, 'SELECT state FROM signalbus_status', 'idle'),
		'(g) worker idle, next sweep in 1 h');
	$n2->safe_psql('postgres', q{
		ALTER SYSTEM SET signalbus.flush_interval = '200ms';
		SELECT pg_reload_conf();
	});
	ok(wait_for_sql($n2, 'SHOW signalbus.flush_interval', '200ms'),
		'(g) flush_interval reloaded to 200ms');
	$n2->safe_psql('postgres', q{INSERT INTO s200_h (tag) VALUES ('h1')});
	my $msgs = get_messages($Qh, count => 1, timeout => 10);
	is_deeply([ map { body_json($_)->{tag} } @$msgs ], ['h1'],
		'(g) after the reload, the ordered row is sent by a sweep within 10 s')
	  or diag 'nothing arrived: the worker still waits for the sweep '
	  . 'scheduled with the old interval (1 h)';
	$n2->stop;
}

done_testing();
