
# Poison rows -- rows that fail on their own -- mixed into a burst of 100
# good rows: an exchange that does not exist, a user_id that is not the
# connection's user and a malformed expiration (the broker closes the
# channel over each), headers that are not an object and a priority out of
# range (no message can be built), and an unroutable message with mandatory
# (the broker returns it).  The good rows arrive at once, unblocked; each bad
# one is retried and, after signalbus.max_attempts (2 here) failures, moved
# to signalbus_dead_letters with one LOG line; signalbus_requeue() puts them
# back, where they fail again -- or are sent once the cause is fixed.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);
use SignalBusTest;

my $QG = '320.good';
my $QF = '320.fixed';
my $QN = '320.nowhere';
my $XMISSING = '320.no.such.exchange';

my $node = new_node(
	'poison',
	flush_interval => '500ms',
	'signalbus.max_attempts' => 2,
	'signalbus.max_backoff' => '1s');
$node->start;
declare_queue($QG);
# neither '320.nowhere' nor the exchange may exist yet (left by an earlier run)
eval { broker_ctl('-q', 'delete_queue', $QN) };
eval {
	broker_ctl('-q', 'eval',
		qq{rabbit_exchange:delete(rabbit_misc:r(<<"/">>, exchange, <<"$XMISSING">>), false, <<"test">>).}
	);
};

$node->safe_psql('postgres', qq{
	CREATE EXTENSION signalbus;
	CREATE TABLE s320 (id int PRIMARY KEY, exchange text, routing_key text,
	                   headers jsonb, priority int, user_id text, expiration text);
	SELECT signalbus_register('s320', routing_key => '$QG', mandatory => true);
});
ok( $node->poll_query_until(
		'postgres',
		"SELECT state = 'idle' FROM signalbus_status WHERE database = 'postgres'"),
	'worker idle');

# id => [the bad column and its value, expected reason in the dead letter]
my %poison = (
	15 => [ exchange => "'$XMISSING'", qr/404|NOT_FOUND/ ],
	30 => [ headers => q{'[1]'}, qr/headers/ ],
	45 => [ priority => 300, qr/priority 300/ ],
	60 => [ routing_key => "'$QN'", qr/returned.*(312|NO_ROUTE)/ ],
	75 => [ user_id => q{'mallory'}, qr/406|PRECONDITION_FAILED|user_id/ ],
	90 => [ expiration => q{'soon'}, qr/406|PRECONDITION_FAILED|expiration/ ],
);
my @cols = qw(exchange routing_key headers priority user_id expiration);
my @bad = sort { $a <=> $b } keys %poison;
my $total = 100 + @bad;
my @good = grep { !$poison{$_} } 1 .. $total;

sub dead
{
	my ($what) = @_;
	return $node->safe_psql('postgres', qq{
		SELECT string_agg($what, ';' ORDER BY ("row"->>'id')::int, id)
		  FROM signalbus_dead_letters});
}

sub moved_lines
{
	my ($from) = @_;
	return grep { /moved to signalbus_dead_letters/ }
	  split /\n/, slurp_file($node->logfile, $from);
}

# --- one burst: 100 good rows with the 6 bad ones among them -------------------------
my $offset = -s $node->logfile;
my @values;
for my $id (1 .. $total)
{
	my %v = $poison{$id} ? ($poison{$id}[0] => $poison{$id}[1]) : ();
	push @values, "($id, " . join(', ', map { $v{$_} // 'NULL' } @cols) . ')';
}
my $sql = 'INSERT INTO s320 (id, ' . join(', ', @cols) . ') VALUES ' . join(",\n", @values);
my $t0 = time;
$node->safe_psql('postgres', $sql);
# read until every good id is there (re-sent duplicates may come first)
my $m = [];
my %got;
my $deadline = time + 30;
while (time < $deadline && grep({ !$got{$_} } @good))
{
	my $more = get_messages($QG, count => scalar(grep { !$got{$_} } @good), timeout => 1);
	$got{ body_json($_)->{id} }++ for @$more;
	push @$m, @$more;
}
my $dt = time - $t0;
is(scalar(grep { $got{$_} } @good), 100,
	sprintf('the 100 good rows arrived (%d messages in %.2f s)', scalar(@$m), $dt));
cmp_ok($dt, '<', 5, 'promptly: the bad rows do not hold them back');
note 'dead letters when the good rows had arrived: ' . dead('"row"->>\'id\'');
my %ctid = map { split /\|/ } split /\n/,
  $node->safe_psql('postgres', 'SELECT id, ctid FROM s320 ORDER BY id');
note 'bad rows left in the table (id|ctid): ' . join(', ', map { "$_|$ctid{$_}" } sort { $a <=> $b } keys %ctid);

ok( wait_for_sql(
		$node, 'SELECT count(*) FROM signalbus_dead_letters', scalar(@bad), 30),
	'the ' . @bad . ' bad rows end in signalbus_dead_letters');
ok(wait_for_sql($node, 'SELECT count(*) FROM s320', '0'), 'the signal table is empty');
is(dead(q{"row"->>'id'}), join(';', @bad), 'the dead letters are exactly the bad rows');
is(dead('attempts::text'), join(';', ('2') x @bad),
	'each after signalbus.max_attempts = 2 attempts');
is(dead('signal::text'), join(';', ('s320') x @bad), 'each names its signal table');
is( $node->safe_psql('postgres', q{
		SELECT bool_and(first_failed_at < last_failed_at) FROM signalbus_dead_letters}),
	't',
	'first_failed_at < last_failed_at (a retry came later)');
my %reason = map { split /\|/, $_, 2 } split /\n/,
  $node->safe_psql('postgres',
	q{SELECT "row"->>'id', error FROM signalbus_dead_letters ORDER BY id});
for my $id (@bad)
{
	like($reason{$id} // '', $poison{$id}[2], "row $id ($poison{$id}[0] $poison{$id}[1]): reason recorded")
	  or diag "error: " . ($reason{$id} // 'none');
	note "row $id: $reason{$id}" if defined $reason{$id};
}

my @lines = moved_lines($offset);
note "LOG lines:\n" . join("\n", @lines);
is(scalar(@lines), scalar(@bad), 'one LOG line per dead-lettered row');
for my $id (@bad)
{
	my $c = $ctid{$id} // 'none';
	is( scalar(grep { /row \Q$c\E of table "s320" moved to signalbus_dead_letters after 2 failed attempts: / }
			  @lines),
		1,
		"row $id: its LOG line names its ctid $c and the attempts");
}

# nothing of a bad row reached a queue
push @$m, @{ get_messages($QG) };
my %all;
$all{ body_json($_)->{id} }++ for @$m;
is(join(',', grep { $all{$_} } @bad), '', "no bad row reached $QG");
is(join(',', grep { !$all{$_} } @good), '', 'every good row arrived (lost: '
	. scalar(grep { !$all{$_} } @good) . ')');
# the rows published before a channel-closing row in the same burst were
# routed, but the channel closed before their confirms came: re-sent
note "$QG: " . scalar(@$m) . ' messages for 100 good rows: ' . (@$m - 100)
  . ' duplicates (ids ' . join(',', sort { $a <=> $b } grep { $all{$_} > 1 } keys %all) . ')';

ok( wait_for_sql(
		$node,
		"SELECT state = 'idle' AND failed > 0 FROM signalbus_status WHERE database = 'postgres'"),
	'the worker is idle (poison rows are no broker failure) and status.failed counts them');
note 'status (state|failed|last_error): ' . $node->safe_psql('postgres',
	"SELECT state, failed, last_error FROM signalbus_status WHERE database = 'postgres'");

# --- signalbus_requeue(id): fails again ---------------------------------------------
my $dl15 = $node->safe_psql('postgres',
	q{SELECT id FROM signalbus_dead_letters WHERE "row"->>'id' = '15'});
$offset = -s $node->logfile;
is($node->safe_psql('postgres', "SELECT signalbus_requeue($dl15)"), '1',
	'signalbus_requeue(id) requeues one row');
is($node->safe_psql('postgres',
		q{SELECT count(*) FROM signalbus_dead_letters WHERE "row"->>'id' = '15'}),
	'0', 'and takes it out of the dead letters');
ok( wait_for_sql(
		$node,
		q{SELECT count(*) FROM signalbus_dead_letters WHERE "row"->>'id' = '15' AND attempts = 2},
		'1', 30),
	'the requeued row fails again and is dead-lettered again');
is(scalar(moved_lines($offset)), 1, 'with one more LOG line');
ok(wait_for_sql($node, 'SELECT count(*) FROM s320', '0'), 'the signal table is empty');

# --- fixed: the exchange exists now; requeue sends it --------------------------------
declare_exchange($XMISSING);
declare_queue($QF, [ $XMISSING, $QG ]);
$dl15 = $node->safe_psql('postgres',
	q{SELECT id FROM signalbus_dead_letters WHERE "row"->>'id' = '15'});
is($node->safe_psql('postgres', "SELECT signalbus_requeue($dl15)"), '1',
	'after declaring the exchange, signalbus_requeue(id) again');
$m = get_messages($QF, count => 1, timeout => 30);
is(scalar(@$m) && body_json($m->[0])->{id}, 15, "now it is sent (to $XMISSING, into $QF)");
ok(wait_for_sql($node, 'SELECT count(*) FROM s320', '0'), 'the signal table is empty');

# --- signalbus_requeue(signal): the unroutable one is fixed, the others fail again ----------
declare_queue($QN);
$offset = -s $node->logfile;
my @rest = grep { $_ != 15 } @bad;
is($node->safe_psql('postgres', "SELECT signalbus_requeue('s320')"), scalar(@rest),
	'signalbus_requeue(signal) requeues the rest');
$m = get_messages($QN, count => 1, timeout => 30);
is(scalar(@$m) && body_json($m->[0])->{id}, 60, "the unroutable row is routable now: it is sent to $QN");
my @still = grep { $_ != 60 } @rest;
ok( wait_for_sql(
		$node, 'SELECT count(*) FROM signalbus_dead_letters', scalar(@still), 30),
	'the others are dead-lettered again');
ok(wait_for_sql($node, 'SELECT count(*) FROM s320', '0'), 'the signal table is empty');
is(dead(q{"row"->>'id'}), join(';', @still), 'the dead letters are the rows still bad');
is(scalar(moved_lines($offset)), scalar(@still), 'one LOG line each');
is(queue_length($QG), 0, "nothing more reached $QG");

# a good row still goes right through
$node->safe_psql('postgres', 'INSERT INTO s320 (id) VALUES (1000)');
$m = get_messages($QG, count => 1, timeout => 30);
is(scalar(@$m) && body_json($m->[0])->{id}, 1000, 'a new good row is sent');

# --- pipelined bursts: a channel-closing row while the next burst is out ----------
# Bursts of 20: while the broker confirms one burst, the worker publishes the
# next.  Rows 50 and 130 close the channel; the bursts then in flight lose
# their confirms.  Every good row must still arrive.  Rows routed before a
# culprit (its own burst's, and the two bursts before it, still unconfirmed:
# the worker keeps up to three bursts out) may arrive twice; nothing after a
# culprit's burst may: those were never routed, and no new burst goes out
# until the culprit is isolated.
my $QP = '320.pipelined';
my $XGONE = '320.still.no.such.exchange';	# (the other one exists by now)
declare_queue($QP);
eval {
	broker_ctl('-q', 'eval',
		qq{rabbit_exchange:delete(rabbit_misc:r(<<"/">>, exchange, <<"$XGONE">>), false, <<"test">>).}
	);
};
$node->safe_psql('postgres', qq{
	TRUNCATE signalbus_dead_letters;
	CREATE TABLE s320p (id int PRIMARY KEY, exchange text);
	SELECT signalbus_register('s320p', routing_key => '$QP', burst_count => 20);
});
# one transaction: the worker gets the 400 rows at once, by ctid (= id order)
$node->safe_psql('postgres', qq{
	INSERT INTO s320p (id, exchange)
	SELECT i, CASE WHEN i IN (50, 130) THEN '$XGONE' END
	  FROM generate_series(1, 400) AS i});
ok( wait_for_sql(
		$node, 'SELECT count(*) FROM signalbus_dead_letters', '2', 60),
	'pipelined: the 2 channel-closing rows end in signalbus_dead_letters');
ok(wait_for_sql($node, 'SELECT count(*) FROM s320p', '0'), 'pipelined: the table is empty');
$m = get_messages($QP, count => 398, timeout => 30);
push @$m, @{ get_messages($QP) };
my %pgot;
$pgot{ body_json($_)->{id} }++ for @$m;
my @pgood = grep { $_ != 50 && $_ != 130 } 1 .. 400;
is(join(',', grep { !$pgot{$_} } @pgood), '', 'pipelined: every good row arrived');
is(join(',', grep { $pgot{$_} } 50, 130), '', 'pipelined: no culprit reached the queue');
my @pdup = sort { $a <=> $b } grep { $pgot{$_} > 1 } keys %pgot;
note 'pipelined: ' . scalar(@$m) . ' messages for 398 rows; duplicates: ' . join(',', @pdup);
is(join(',', grep { !(($_ >= 1 && $_ < 50) || ($_ >= 81 && $_ < 130)) } @pdup), '',
	'pipelined: duplicates only of rows routed before a culprit');
is(dead(q{"row"->>'id'}), '50;130', 'pipelined: the dead letters are the 2 culprits');

# --- a return that fits two messages -------------------------------------------
# basic.return names no delivery tag: it is matched by exchange, routing key
# and body.  Rows 2 and 3 have the same body and differ only in a header, and
# the headers exchange routes row 2 but not row 3: the return cannot say
# which one came back, so neither may be deleted on its ack.  Row 3 must end
# in signalbus_dead_letters, never silently deleted; row 1 (a body of its
# own) arrives once.
my $QH = '320.headers';
declare_queue($QH, [ 'amq.headers', 'x=1' ]);
$node->safe_psql('postgres', qq{
	TRUNCATE signalbus_dead_letters;
	CREATE TABLE s320h (id int PRIMARY KEY, body text, headers jsonb);
	SELECT signalbus_register('s320h', exchange => 'amq.headers', routing_key => '',
	                          mandatory => true);
	INSERT INTO s320h VALUES (1, 'one of a kind', '{"x": "1"}'),
	                         (2, 'same', '{"x": "1"}'), (3, 'same', '{"x": "2"}');
});
ok(wait_for_sql($node, 'SELECT count(*) FROM s320h', '0', 60), 'ambiguous return: the table drains');
$m = get_messages($QH, timeout => 2);
my %hgot;
$hgot{ $_->{body} }++ for @$m;
my %hdead = map { $_ => 1 } split /;/, dead(q{"row"->>'id'}) // '';
note 'ambiguous return: received ' . join(', ', map { "$_ x$hgot{$_}" } sort keys %hgot)
  . '; dead letters: ' . join(',', sort keys %hdead);
is($hgot{'one of a kind'} // 0, 1, 'ambiguous return: the row with a body of its own arrived once');
ok($hdead{3}, 'ambiguous return: the unroutable row is in signalbus_dead_letters, not lost');
ok($hgot{same} || $hdead{2}, 'ambiguous return: its twin arrived or is set aside');

unlike(slurp_file($node->logfile), qr/terminated by signal/, 'no process crashed');
$node->stop;
done_testing();
