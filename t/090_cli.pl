# 090_cli.pl -- the signalbus command-line client (cli/), end to end.
#
# The program is found on PATH (make installcheck puts `pg_config --bindir`
# there; cli/Makefile installs it next to psql).  The signal tables live in
# database "clidb", which no worker serves (signalbus.databases names only
# "postgres"), so every message the broker holds was sent by the client.
# Covered: --help and --version of the program and of every command, bad
# usage, every command's output and exit status, SIGNAL arguments (plain,
# schema-qualified, unknown, not a signal table, no privilege), --exclude,
# --wait, --repeat stopped by SIGTERM and SIGINT, flushordered's order,
# flushmany's progress (live on a terminal, plain lines otherwise), the
# connection options and environment, and a stopped broker.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep time);
use SignalBusTest;

# --- no server needed: help, version, bad usage ------------------------------

program_help_ok('signalbus');
program_version_ok('signalbus');
program_options_handling_ok('signalbus');
command_like([ 'signalbus', '--version' ],
	qr/\Asignalbus \(signalbus\) 0\.1\.0\n\z/, '--version');
command_like([ 'signalbus', '--help' ],
	qr/^Commands:\n  flush .*\n  flushmany .*\n  flushordered .*\n  signals .*\n  pending .*\n  status /m,
	'--help lists the commands');
for my $cmd (qw(flush flushmany flushordered signals pending status))
{
	command_like([ 'signalbus', $cmd, '--help' ],
		qr/^Usage:\n  signalbus \[CONNECTION-OPTION\]\.\.\. $cmd\b/m,
		"$cmd --help");
}
command_like([ 'signalbus', 'flush', '-?' ],
	qr/--exclude=SIGNAL.*--wait=SECONDS.*--repeat=SECONDS/s,
	'flush -? shows its options');
command_fails_like([ 'signalbus' ], qr/error: no command specified/,
	'no command');
command_fails_like([ 'signalbus', 'frobnicate' ],
	qr/error: unrecognized command "frobnicate"/, 'unknown command');
command_fails_like([ 'signalbus', 'signals', 'extra' ],
	qr/error: command "signals" takes no arguments/, 'signals takes no SIGNAL');
command_fails_like([ 'signalbus', 'flushmany', '--wait', '1' ],
	qr/error: option --wait is not valid for command "flushmany"/,
	'--wait belongs to flush only');
command_fails_like([ 'signalbus', '--exclude', 'x', 'flush' ],
	qr/error: option -e\/--exclude must follow a command/,
	'command options go after the command');
command_fails_like([ 'signalbus', 'flush', '--repeat', 'soon' ],
	qr/error: invalid value "soon" for option --repeat/, 'bad --repeat');
command_fails_like([ 'signalbus', 'flush', '--wait', '-1' ],
	qr/error: invalid value "-1" for option --wait/, 'negative --wait');

# --- a node and the tables -------------------------------------------------

my @queues = map { "q090_$_" } qw(a b c d o m slow1 slow2);
declare_queue($_) for @queues;

my $node = new_node('cli090');
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION signalbus');
$node->safe_psql('postgres', 'CREATE DATABASE clidb');
$node->safe_psql('clidb', q{
	CREATE EXTENSION signalbus;
	CREATE TABLE s090_a (id bigserial PRIMARY KEY, tag text);
	SELECT signalbus_register('s090_a', routing_key => 'q090_a');
	CREATE TABLE s090_b (id bigserial PRIMARY KEY, tag text);
	SELECT signalbus_register('s090_b', routing_key => 'q090_b');
	CREATE TABLE s090_c (id bigserial PRIMARY KEY, tag text);
	SELECT signalbus_register('s090_c', routing_key => 'q090_c');
	CREATE SCHEMA other;
	CREATE TABLE other.s090_d (id bigserial PRIMARY KEY, tag text);
	SELECT signalbus_register('other.s090_d', routing_key => 'q090_d');
	CREATE TABLE s090_o (id bigserial PRIMARY KEY, tag text);
	SELECT signalbus_register('s090_o', routing_key => 'q090_o', order_by => 'id');
	CREATE TABLE s090_m (id bigserial PRIMARY KEY, tag text);
	SELECT signalbus_register('s090_m', routing_key => 'q090_m', burst_count => 10);
	CREATE TABLE not_signal (id int PRIMARY KEY);
	CREATE ROLE cli_user LOGIN;
});
ok(wait_for_sql($node, 'SELECT state FROM signalbus_status', 'idle', 60),
	'the worker of database postgres is idle');

# the client, connected to clidb with explicit options
sub cli
{
	return [ 'signalbus', '-h', $node->host, '-p', $node->port, '-d', 'clidb', @_ ];
}

sub insert
{
	my ($table, @tags) = @_;
	$node->safe_psql('clidb', "INSERT INTO $table (tag) VALUES "
		  . join(', ', map { "('$_')" } @tags));
	return;
}

sub pending
{
	my ($table) = @_;
	return $node->safe_psql('clidb', "SELECT count(*) FROM $table");
}

sub tags_of
{
	my ($msgs) = @_;
	return [ sort map { body_json($_)->{tag} // '<null>' } @$msgs ];
}

# The broker holds exactly the messages @$expected (tags) in $queue: wait for
# that many, take whatever else is there too, compare the multisets.
sub expect_tags
{
	my ($queue, $expected, $what) = @_;
	my $msgs = @$expected
	  ? get_messages($queue, count => scalar @$expected, timeout => 30)
	  : [];
	push @$msgs, @{ get_messages($queue) };
	my $got = tags_of($msgs);
	my $want = [ sort @$expected ];
	is_deeply($got, $want, "$what: broker received exactly the expected messages")
	  or diag "queue $queue held " . scalar(@$got) . " message(s): [@$got]\n"
	  . "expected " . scalar(@$want) . ": [@$want]";
	return $msgs;
}

# nothing reached any queue
sub broker_got_nothing
{
	my ($what) = @_;
	my @full = grep { queue_length($_) != 0 } @queues;
	is_deeply(\@full, [], "$what: the broker received nothing")
	  or diag 'queues holding messages: ' . join(', ',
		map { "$_ (" . queue_length($_) . ')' } @full);
	return;
}

# --- signals and pending ---------------------------------------------------

# PGHOST and PGPORT come from the environment here (as for psql)
$node->command_like(
	[ 'signalbus', '-d', 'clidb', 'signals' ],
	qr/\Aother\.s090_d\ns090_a\ns090_b\ns090_c\ns090_m\ns090_o\n\z/,
	'signals: one table a line, schema-qualified when off search_path');
$node->command_like(
	[ 'signalbus', 'signals', '-d', $node->connstr('clidb') ],
	qr/\Aother\.s090_d\ns090_a\n/,
	'signals: -d takes a connection string, after the command too');

insert('s090_a', qw(a1 a2 a3));
insert('s090_b', map { "b$_" } 1 .. 12);
insert('other.s090_d', 'd1');
command_like(cli('pending'),
	qr/\A 1 other\.s090_d\n 3 s090_a\n12 s090_b\n-{25}\nTotal pending: 16\n\z/,
	'pending: counts right-aligned, fewest first, then the total');
command_like(
	[ 'signalbus', '-h', $node->host, '-p', $node->port, '-d', 'postgres', 'pending' ],
	qr/\A-{25}\nTotal pending: 0\n\z/,
	'pending in a database without signal tables');
broker_got_nothing('signals and pending');

# --- status ------------------------------------------------------------------

my $port = $ENV{SB_AMQP_PORT};
command_like(cli('status'),
	qr/^ *database *\| *pid *\| *state *\| *broker *\| *sent *\| *failed *\|.*\n-+\+-+\+.*\n postgres +\| +\d+ \| idle +\| amqp:\/\/guest\@localhost:$port\/%2f +\|.*\n\(1 row\)\n/,
	'status: the worker, aligned as psql aligns');
command_like(cli('status', '-x'),
	qr/\A-\[ RECORD 1 \]-+\+-+\ndatabase +\| postgres\npid +\| \d+\nstate +\| idle\n/,
	'status -x: expanded');
broker_got_nothing('status');

# --- flush -------------------------------------------------------------------

command_like(cli('flush', 's090_a'), qr/\A3 messages sent\n\z/,
	'flush SIGNAL');
expect_tags('q090_a', [qw(a1 a2 a3)], 'flush SIGNAL');
is(pending('s090_a'), '0', 'flush SIGNAL: its table is drained');
is(pending('s090_b'), '12', 'flush SIGNAL: another table is left alone');
is(queue_length('q090_b'), 0, 'flush SIGNAL: nothing of another table sent');

insert('s090_c', qw(c1 c2));
command_like(cli('flush', '-e', 's090_b', '--exclude', 'other.s090_d'),
	qr/\A2 messages sent\n\z/, 'flush --exclude');
expect_tags('q090_c', [qw(c1 c2)], 'flush --exclude: the other tables');
is(queue_length('q090_b'), 0, 'flush --exclude: nothing of s090_b sent');
is(queue_length('q090_d'), 0, 'flush --exclude: nothing of other.s090_d sent');
is(pending('s090_b') . '/' . pending('other.s090_d'), '12/1',
	'flush --exclude: the excluded tables keep their rows');

command_like(cli('flush', 'other.s090_d'), qr/\A1 message sent\n\z/,
	'flush a schema-qualified SIGNAL');
expect_tags('q090_d', ['d1'], 'flush a schema-qualified SIGNAL');

insert('s090_a', 'a4');
command_checks_all(cli('-v', 'flush'), 0,
	[qr/\A13 messages sent\n\z/],
	[ qr/^s090_a: 1 sent$/m, qr/^s090_b: 12 sent$/m, qr/^other\.s090_d: 0 sent$/m ],
	'flush -v of every table: per-table lines');
expect_tags('q090_a', ['a4'], 'flush of every table, s090_a');
expect_tags('q090_b', [ map { "b$_" } 1 .. 12 ], 'flush of every table, s090_b');

insert('s090_a', 'a5');
my $t0 = time;
command_like(cli('flush', '--wait', '1.5', 's090_a'), qr/\A1 message sent\n\z/,
	'flush --wait');
cmp_ok(time - $t0, '>=', 1.5, 'flush --wait: waited before flushing');
expect_tags('q090_a', ['a5'], 'flush --wait');
insert('s090_a', 'a6');
command_like(cli('flush', 's090_a', '-w', '0.1'), qr/\A1 message sent\n\z/,
	'flush -w after a SIGNAL');
expect_tags('q090_a', ['a6'], 'flush -w after a SIGNAL');

command_like(cli('flush', 's090_c', 's090_c'), qr/\A0 messages sent\n\z/,
	'flush with nothing pending');
broker_got_nothing('flush with nothing pending');

# --- errors ------------------------------------------------------------------

insert('s090_a', 'kept');
command_fails_like(cli('flush', 's090_a', 'no_such_table'),
	qr/^signalbus: error: relation "no_such_table" does not exist$/m,
	'flush of an unknown table');
command_fails_like(cli('-v', 'flush', 'no_such_table'),
	qr/error: 42P01: relation "no_such_table" does not exist/,
	'flush of an unknown table: -v shows the SQLSTATE');
is(pending('s090_a'), '1',
	'an unknown SIGNAL fails before any table is flushed');
command_fails_like(cli('-v', 'flush', 'not_signal'),
	qr/error: 42704: table "not_signal" is not a signal table/,
	'flush of a table that is not a signal table');
command_fails_like(cli('-U', 'cli_user', 'flush', 's090_a'),
	qr/error: permission denied for table s090_a/,
	'flush without privilege');
command_fails_like(cli('-U', 'cli_user', 'flush', '-v', 's090_a'),
	qr/error: 42501: permission denied for table s090_a/,
	'flush without privilege: -v shows the SQLSTATE');
command_checks_all(cli('-U', 'cli_user', 'pending'), 0,
	[qr/Total pending: 0\n\z/],
	[qr/warning: permission denied for table s090_a: its pending signals are not counted/],
	'pending without privilege: a warning');
command_checks_all(cli('-U', 'cli_user', 'flush'), 0,
	[qr/\A0 messages sent\n\z/], [qr/\A\z/],
	'flush of every table flushes only those the user may flush');
is(pending('s090_a'), '1', 'the failed flushes kept the row');
broker_got_nothing('the failed flushes');
command_checks_all(cli('flush', '-e', 'no_such_table', '-e', 'not_signal', 's090_c'),
	0, [qr/\A0 messages sent\n\z/],
	[
		qr/warning: excluded table "no_such_table" does not exist/,
		qr/warning: excluded table "not_signal" is not a signal table/
	],
	'--exclude of what is no signal table: warnings');
command_fails_like(
	[ 'signalbus', '-h', $node->host, '-p', $node->port, '-d', 'template1', 'signals' ],
	qr/error: extension "signalbus" is not installed in database "template1"/,
	'a database without the extension');
my $free_port = PostgreSQL::Test::Cluster::get_free_port();
command_fails_like([ 'signalbus', '-h', $node->host, '-p', $free_port, '-w', 'signals' ],
	qr/error: connection to server .* failed/, 'no server');

command_like(cli('flush', 's090_a'), qr/\A1 message sent\n\z/,
	'the row kept by the failures is sent');
expect_tags('q090_a', ['kept'], 'the row kept by the failures');

# --- flushordered ------------------------------------------------------------

$node->safe_psql('clidb', q{
	INSERT INTO s090_o (tag) SELECT 'o' || g FROM generate_series(1, 10) g;
	INSERT INTO s090_o (tag) SELECT 'o' || g FROM generate_series(11, 30) g;
});
command_like(cli('flushordered', 's090_o'), qr/\A30 messages sent\n\z/,
	'flushordered');
{
	my $msgs = get_messages('q090_o', count => 30, timeout => 30);
	push @$msgs, @{ get_messages('q090_o') };
	is_deeply([ map { body_json($_)->{tag} } @$msgs ], [ map { "o$_" } 1 .. 30 ],
		'flushordered: the broker received the rows in id order');
}

# --- flushmany -------------------------------------------------------------

insert('s090_m', map { "m$_" } 1 .. 250);
command_checks_all(cli('flushmany', 's090_m'), 0,
	[qr/\A250 messages sent\n\z/],
	[qr/\As090_m: 250 sent in \d+\.\d s \(\d+\/s\)\n\z/],
	'flushmany SIGNAL');
expect_tags('q090_m', [ map { "m$_" } 1 .. 250 ], 'flushmany SIGNAL');

insert('s090_m', 'm251');
insert('s090_c', 'c3');
command_checks_all(cli('flushmany', '-e', 's090_m'), 0,
	[qr/\A1 message sent\n\z/],
	[qr/^s090_c: 1 sent in /m, qr/^s090_a: 0 sent in /m],
	'flushmany --exclude');
expect_tags('q090_c', ['c3'], 'flushmany --exclude');
is(queue_length('q090_m'), 0, 'flushmany --exclude: nothing of s090_m sent');
command_checks_all(cli('flushmany', 's090_m'), 0,
	[qr/\A1 message sent\n\z/], [qr/\As090_m: 1 sent in /],
	'flushmany: the excluded table later');
expect_tags('q090_m', ['m251'], 'flushmany: the excluded table later');

# Progress NOTICEs come every 10 s: two tables whose deletes are slowed down
# (10 ms a row, bursts of 10) take ~13 s each, flushed side by side: one with
# stderr on a terminal (a live line rewritten in place), one on a pipe
# (plain lines).
my $have_pty = eval { require IO::Pty; 1 };
my $N = 1300;
$node->safe_psql('clidb', qq{
	CREATE FUNCTION slow_delete() RETURNS trigger LANGUAGE plpgsql
	AS \$\$BEGIN PERFORM pg_sleep(0.01); RETURN OLD; END\$\$;
	CREATE TABLE s090_slow1 (id bigserial PRIMARY KEY, tag text);
	CREATE TABLE s090_slow2 (id bigserial PRIMARY KEY, tag text);
	CREATE TRIGGER slow BEFORE DELETE ON s090_slow1
		FOR EACH ROW EXECUTE FUNCTION slow_delete();
	CREATE TRIGGER slow BEFORE DELETE ON s090_slow2
		FOR EACH ROW EXECUTE FUNCTION slow_delete();
	SELECT signalbus_register('s090_slow1', routing_key => 'q090_slow1', burst_count => 10);
	SELECT signalbus_register('s090_slow2', routing_key => 'q090_slow2', burst_count => 10);
	INSERT INTO s090_slow1 (tag) SELECT 'x' || g FROM generate_series(1, $N) g;
	INSERT INTO s090_slow2 (tag) SELECT 'x' || g FROM generate_series(1, $N) g;
});
{
	my ($out1, $err1, $out2, $err2) = ('', '', '', '');
	my $h1 = IPC::Run::start(cli('flushmany', 's090_slow1'),
		'<', \undef, '>', \$out1, ($have_pty ? '2>pty>' : '2>'), \$err1,
		IPC::Run::timeout(120));
	my $h2 = IPC::Run::start(cli('flushmany', 's090_slow2'),
		'<', \undef, '>', \$out2, '2>', \$err2, IPC::Run::timeout(120));
	ok($h1->finish, 'flushmany, stderr on a terminal: exit status 0');
	ok($h2->finish, 'flushmany, stderr on a pipe: exit status 0');
	note "terminal: $err1";
	note "pipe: $err2";
	is($out1, "$N messages sent\n", 'flushmany, stderr on a terminal: the total');
	is($out2, "$N messages sent\n", 'flushmany, stderr on a pipe: the total');
	like($err2,
		qr/\As090_slow2: \d+ sent \(\d+\/s\), about \d+ left, ETA \S+, \d+s elapsed\n(?:.*\n)*s090_slow2: $N sent in \d+\.\d s \(\d+\/s\)\n\z/,
		'flushmany, stderr on a pipe: progress and final lines');
	unlike($err2, qr/\r/, 'flushmany, stderr on a pipe: no carriage return');
  SKIP:
	{
		skip 'IO::Pty is not installed', 3 unless $have_pty;
		like($err1, qr/\rs090_slow1: flushing, 1s elapsed/,
			'flushmany on a terminal: a live line before the first report');
		like($err1,
			qr/\rs090_slow1: \d+ sent \(\d+\/s\), about \d+ left, ETA \S+, \d+s elapsed/,
			'flushmany on a terminal: sent, rate, left, ETA');
		like($err1,
			qr/\A[^\n]*\rs090_slow1: $N sent in \d+\.\d s \(\d+\/s\)\r?\n\z/,
			'flushmany on a terminal: one line, rewritten in place, then the final line');
	}
	my $m1 = get_messages('q090_slow1', count => $N, timeout => 30);
	my $m2 = get_messages('q090_slow2', count => $N, timeout => 30);
	is(scalar @$m1, $N, "flushmany, terminal: the broker received $N messages");
	is(scalar @$m2, $N, "flushmany, pipe: the broker received $N messages");
	$node->safe_psql('clidb', q{
		SELECT signalbus_unregister('s090_slow1');
		SELECT signalbus_unregister('s090_slow2');
	});
}

# --- --repeat, stopped by a signal ------------------------------------------

# flush --repeat: rows inserted while it loops are sent; SIGTERM stops it
# between two flushes with exit status 0
{
	my ($out, $err) = ('', '');
	my $h = IPC::Run::start(cli('flush', '--repeat', '0.2', 's090_a'),
		'<', \undef, '>', \$out, '2>', \$err, IPC::Run::timeout(60));
	insert('s090_a', qw(rep1 rep2));
	expect_tags('q090_a', [qw(rep1 rep2)], 'flush --repeat: first rows');
	insert('s090_a', 'rep3');
	insert('s090_b', 'not-this-one');
	expect_tags('q090_a', ['rep3'], 'flush --repeat: later rows');
	ok(wait_for_sql($node, 'SELECT count(*) FROM s090_a', '0', 30, 'clidb'),
		'flush --repeat: the table is drained');
	$h->signal('TERM');
	ok($h->finish, 'flush --repeat: SIGTERM ends it with exit status 0')
	  or diag "exit status " . ($h->full_result(0) >> 8) . ", stderr: $err";
	like($out, qr/\A(?:[12] messages? sent\n)+\z/,
		'flush --repeat: a line for each run that sent something');
	my $sum = 0;
	$sum += $1 while $out =~ /^(\d+) messages? sent$/mg;
	is($sum, 3, 'flush --repeat: its lines add up to the rows sent');
	is($err, '', 'flush --repeat: nothing on stderr');
	is(queue_length('q090_b'), 0, 'flush --repeat: other tables left alone');
	is(pending('s090_b'), '1', 'flush --repeat: the other table keeps its row');
}

# flushmany --repeat and SIGINT
{
	my ($out, $err) = ('', '');
	my $h = IPC::Run::start(cli('flushmany', '-r', '0.2', 's090_m'),
		'<', \undef, '>', \$out, '2>', \$err, IPC::Run::timeout(60));
	insert('s090_m', map { "rm$_" } 1 .. 25);
	expect_tags('q090_m', [ map { "rm$_" } 1 .. 25 ], 'flushmany --repeat');
	$h->signal('INT');
	ok($h->finish, 'flushmany --repeat: SIGINT ends it with exit status 0')
	  or diag "exit status " . ($h->full_result(0) >> 8) . ", stderr: $err";
	like($out, qr/\A(?:\d+ messages? sent\n)+\z/, 'flushmany --repeat: stdout');
	is(pending('s090_m'), '0', 'flushmany --repeat: the table is drained');
}

# a long period: the stop does not wait for the next run
{
	my ($out, $err) = ('', '');
	insert('s090_o', qw(o31 o32));
	my $h = IPC::Run::start(cli('flushordered', '--repeat', '3600', 's090_o'),
		'<', \undef, '>', \$out, '2>', \$err, IPC::Run::timeout(60));
	my $msgs = get_messages('q090_o', count => 2, timeout => 30);
	is_deeply([ map { body_json($_)->{tag} } @$msgs ], [qw(o31 o32)],
		'flushordered --repeat: the rows, in order');
	my $t = time;
	$h->signal('TERM');
	ok($h->finish, 'flushordered --repeat: SIGTERM during the sleep, exit status 0');
	cmp_ok(time - $t, '<', 10, 'flushordered --repeat: stopped at once');
	is($out, "2 messages sent\n", 'flushordered --repeat: stdout');
}

# --- a stopped broker -------------------------------------------------------

insert('s090_a', 'outage');
broker_stop();
my $broker_re = qr/could not connect to AMQP broker at amqp:\/\/guest\@localhost:$port\//;
command_fails_like(cli('flush', 's090_a'), qr/^signalbus: error: $broker_re/m,
	'broker down: flush fails');
command_fails_like(cli('-v', 'flush'), qr/error: 08001: $broker_re/,
	'broker down: flush -v shows SQLSTATE 08001');
command_fails_like(cli('flushmany', 's090_a'), qr/error: $broker_re/,
	'broker down: flushmany fails');
command_fails_like(cli('flushordered', 's090_a'), qr/error: $broker_re/,
	'broker down: flushordered fails');
command_fails_like(cli('flush', '--repeat', '0.2', 's090_a'), qr/error: $broker_re/,
	'broker down: flush --repeat fails');
is(pending('s090_a'), '1', 'broker down: the row is kept');
broker_start();
command_like(cli('flush', 's090_a'), qr/\A1 message sent\n\z/,
	'broker back: flush sends the row');
expect_tags('q090_a', ['outage'], 'broker back: the row kept during the outage');

# everything else is still where it was: s090_b's row, nothing stray
expect_tags('q090_b', [], 'at the end, s090_b');
is(pending('s090_b'), '1', 'at the end, s090_b still holds its row');
command_like(cli('flush'), qr/\A1 message sent\n\z/, 'a last flush');
expect_tags('q090_b', ['not-this-one'], 'a last flush');
command_like(cli('pending'), qr/\A-{25}\nTotal pending: 0\n\z/,
	'nothing pending at the end');
broker_got_nothing('at the end');

$node->stop;
done_testing();
