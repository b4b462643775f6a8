=pod

=head1 NAME

SignalBusTest - helpers for signalbus TAP tests (broker side)

=head1 SYNOPSIS

  use strict; use warnings;
  use FindBin; use lib $FindBin::RealBin;   # or: use lib 't';
  use PostgreSQL::Test::Utils;
  use Test::More;
  use SignalBusTest;

  my $node = new_node('main');            # signalbus preloaded, not started
  $node->start;
  declare_queue('t.q');                   # default exchange: key 't.q' -> queue 't.q'
  $node->safe_psql('postgres', q{
      CREATE EXTENSION signalbus;
      CREATE TABLE s (id bigserial PRIMARY KEY, v text);
      SELECT signalbus_register('s', routing_key => 't.q');
      INSERT INTO s (v) VALUES ('x');
  });
  my $msgs = get_messages('t.q', count => 1);
  is(scalar @$msgs, 1, 'one message');
  is(body_json($msgs->[0])->{v}, 'x', 'row as JSON');
  done_testing();

=head1 ENVIRONMENT

Set by scripts/test.sh; the module dies at load time if one is missing:
SB_AMQP_PORT (AMQP port of the private RabbitMQ node), SB_RUN_DIR (the
harness's run directory), SB_AMQP_DUMP (path of the amqp-dump tool built from
t/amqp_dump.c).  Optional: SB_RABBITMQCTL (default: scripts/rabbitmqctl.sh
next to this file's directory).

=head1 FUNCTIONS

All exported by default.

=over

=cut

package SignalBusTest;

use strict;
use warnings;

use Cwd qw(abs_path);
use File::Basename qw(dirname);
use IO::Socket::IP;
use IPC::Run;
use JSON::PP;
use Time::HiRes qw(sleep time);
use Test::More;
use PostgreSQL::Test::Cluster;

use Exporter 'import';
our @EXPORT = qw(amqp_url new_node declare_queue declare_exchange get_messages
  body_json queue_length broker_ctl broker_stop broker_start wait_for_sql
  query_retry worker_status wait_worker_status wait_new_worker wait_rows_below
  check_arrived freeze_worker thaw_worker worker_log_lines);

BEGIN
{
	my @missing = grep { !defined $ENV{$_} || $ENV{$_} eq '' }
	  qw(SB_AMQP_PORT SB_RUN_DIR SB_AMQP_DUMP);
	die "SignalBusTest: environment variable(s) @missing not set; "
	  . "run the tests with: bash scripts/test.sh\n"
	  if @missing;
	die "SignalBusTest: SB_AMQP_DUMP=$ENV{SB_AMQP_DUMP} is not executable; "
	  . "build it with: bash scripts/build.sh tools\n"
	  unless -x $ENV{SB_AMQP_DUMP};
}

my $RABBITMQCTL = $ENV{SB_RABBITMQCTL}
  // dirname(dirname(abs_path(__FILE__))) . '/scripts/rabbitmqctl.sh';

# run(@cmd) -> (exit code, stdout, stderr)
sub _run
{
	my @cmd = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run(\@cmd, '<', \undef, '>', \$out, '2>', \$err);
	return ($? >> 8, $out, $err);
}

sub _dump
{
	my ($rc, $out, $err) = _run($ENV{SB_AMQP_DUMP}, '--url', amqp_url(), @_);
	return ($rc, $out, $err);
}

=item amqp_url()

C<amqp://guest:guest@localhost:$SB_AMQP_PORT/%2f>, the private broker.

=cut

sub amqp_url
{
	return "amqp://guest:guest\@localhost:$ENV{SB_AMQP_PORT}/%2f";
}

=item new_node($name, %opts)

A new PostgreSQL::Test::Cluster, init'ed (not started) with
C<shared_preload_libraries = 'signalbus'>, C<signalbus.amqp_url = amqp_url()>,
C<signalbus.databases>, C<signalbus.flush_interval> and
C<max_prepared_transactions = 10>.  Options:
C<databases> (default 'postgres'), C<flush_interval> (default '1s'),
C<amqp_url> (e.g. a dead port to simulate a missing broker),
C<init> (hashref passed to C<< $node->init >>),
C<conf> (string or arrayref of extra postgresql.conf lines);
any other key is a setting: C<< 'signalbus.max_attempts' => 2 >>.

=cut

sub new_node
{
	my ($name, %opts) = @_;
	my %known = map { $_ => delete $opts{$_} }
	  qw(databases flush_interval amqp_url init conf);
	my %set = (
		shared_preload_libraries => 'signalbus',
		'signalbus.amqp_url' => $known{amqp_url} // amqp_url(),
		'signalbus.databases' => $known{databases} // 'postgres',
		'signalbus.flush_interval' => $known{flush_interval} // '1s',
		max_prepared_transactions => 10,
		%opts);
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(%{ $known{init} // {} });
	my @lines = map {
		(my $v = $set{$_}) =~ s/'/''/g;
		"$_ = '$v'"
	} sort keys %set;
	my $conf = $known{conf} // [];
	push @lines, ref $conf ? @$conf : $conf;
	$node->append_conf('postgresql.conf', join("\n", @lines));
	return $node;
}

=item declare_queue($queue, @bindings [, \%opts])

Declares C<$queue> on the private broker, purges it, and binds it:
each binding is C<[$exchange, $routing_key]>.  Messages published to the
default exchange '' with routing key C<$queue> need no binding.  The queue is
B<durable> unless C<< { durable => 0 } >> is passed last: RabbitMQ deletes
non-durable queues on broker_stop() (stop_app), so a message the worker sends
right after broker_start() would be dropped as unroutable.  Redeclaring a
queue with the other durability fails (RabbitMQ's rule).  Dies on error.

=cut

sub declare_queue
{
	my ($queue, @bindings) = @_;
	my $opts = (@bindings && ref $bindings[-1] eq 'HASH') ? pop @bindings : {};
	my @args = ('--declare', $queue, '--purge');
	push @args, '--durable' if $opts->{durable} // 1;
	push @args, map { ('--bind', "$_->[0]:$_->[1]") } @bindings;
	my ($rc, $out, $err) = _dump(@args);
	die "declare_queue($queue): $err" if $rc;
	return;
}

=item declare_exchange($name, $type = 'direct')

Declares a non-durable exchange (then bind queues to it with declare_queue).

=cut

sub declare_exchange
{
	my ($name, $type) = @_;
	my ($rc, $out, $err) = _dump('--exchange', "$name:" . ($type // 'direct'));
	die "declare_exchange($name): $err" if $rc;
	return;
}

=item get_messages($queue, count => N, timeout => S)

Takes (auto-ack) messages from C<$queue> and returns an arrayref of hashrefs:
C<< { exchange, routing_key, redelivered, body, [body_hex,] properties => {
content_type, delivery_mode, headers => {...}, ... only those set } } >>
(see t/amqp_dump.c).  With C<count>, waits up to C<timeout> seconds (default
30) until N messages were read, and returns whatever arrived (check the
count); without C<count>, returns what the queue holds now (C<timeout>: wait
up to S seconds for at least one).  C<body> is a Perl character string.

=cut

sub get_messages
{
	my ($queue, %o) = @_;
	my $count = $o{count} // 0;
	my $timeout = $o{timeout} // ($count ? 30 : 0);
	my ($rc, $out, $err) = _dump('--queue', $queue, '--count', $count,
		'--wait', $timeout);
	die "get_messages($queue): $err" if $rc != 0 && $rc != 2;
	my $json = JSON::PP->new->utf8;
	return [ map { $json->decode($_) } grep { length } split /\n/, $out ];
}

=item body_json($message)

The message body decoded as JSON (dies if it is not JSON).

=cut

sub body_json
{
	my ($msg) = @_;
	return JSON::PP->new->allow_nonref->decode($msg->{body});
}

=item queue_length($queue)

Number of ready messages in C<$queue> (passive declare), undef if the queue
does not exist.

=cut

sub queue_length
{
	my ($queue) = @_;
	my ($rc, $out, $err) = _dump('--length', $queue);
	return undef if $rc && $err =~ /404/;
	die "queue_length($queue): $err" if $rc;
	chomp $out;
	return $out + 0;
}

=item broker_ctl(@args)

Runs C<rabbitmqctl -n NODE @args> against the private node (through
scripts/rabbitmqctl.sh, which handles the Erlang cookie); returns its stdout,
dies with its stderr on failure.  Each call takes about 0.5 s.

=cut

sub broker_ctl
{
	my ($rc, $out, $err) = _run('bash', $RABBITMQCTL, @_);
	die "broker_ctl(@_) failed (exit $rc): $err$out" if $rc;
	return $out;
}

=item broker_stop()

Stops the RabbitMQ application on the private node (C<stop_app>): clients
are disconnected and connections refused; the Erlang node stays up.
Non-durable queues are lost.  If the test script ends without
broker_start(), the broker is started again at exit (for the next script).

=cut

my $broker_stopped = 0;
my $loader_pid = $$;

sub broker_stop
{
	$broker_stopped = 1;
	broker_ctl('-q', 'stop_app');
	return;
}

END
{
	if ($broker_stopped && $$ == $loader_pid)
	{
		local $?;
		eval { broker_ctl('-q', 'start_app') };
	}
}

=item broker_start($timeout = 60)

C<start_app>, then waits until the AMQP port accepts connections.

=cut

sub broker_start
{
	my ($timeout) = @_;
	my $deadline = time + ($timeout // 60);
	broker_ctl('-q', 'start_app');
	$broker_stopped = 0;
	while (1)
	{
		my $s = IO::Socket::IP->new(
			PeerHost => 'localhost',
			PeerPort => $ENV{SB_AMQP_PORT},
			Timeout => 2);
		if ($s) { close $s; return; }
		die "broker_start: port $ENV{SB_AMQP_PORT} still refuses connections"
		  if time > $deadline;
		sleep 0.1;
	}
}

=item wait_for_sql($node, $query, $expected = 't', $timeout = 30, $dbname = 'postgres')

Runs C<$query> every 0.1 s until its output (psql -At) equals C<$expected>;
true on success, false (with a diag of the last output) after C<$timeout>
seconds.  Use as C<< ok(wait_for_sql($node, 'SELECT count(*) FROM s', '0'), '...') >>.

=cut

sub wait_for_sql
{
	my ($node, $query, $expected, $timeout, $dbname) = @_;
	$expected //= 't';
	$dbname //= 'postgres';
	my $deadline = time + ($timeout // 30);
	my ($out, $err) = ('', '');
	while (1)
	{
		$node->psql($dbname, $query, stdout => \$out, stderr => \$err);
		return 1 if $out eq $expected && $err eq '';
		last if time > $deadline;
		sleep 0.1;
	}
	diag "wait_for_sql timed out: $query\nexpected: $expected\ngot: $out\nstderr: $err";
	return 0;
}

=item query_retry($node, $sql, $timeout = 60, $dbname = 'postgres')

Runs C<$sql> and returns its output, retrying while the server cannot be
reached (a crash-restart, a restart under way) for up to C<$timeout>
seconds; dies after that.

=cut

sub query_retry
{
	my ($node, $sql, $timeout, $dbname) = @_;
	my $deadline = time + ($timeout // 60);
	while (1)
	{
		my $out = eval { $node->safe_psql($dbname // 'postgres', $sql) };
		return $out if defined $out;
		die $@ if time > $deadline;
		sleep 0.2;
	}
}

=item worker_status($node, $cols, $dbname = 'postgres')

C<$cols> of the C<signalbus_status> row of database postgres's worker, read
in C<$dbname> (with query_retry).

=cut

sub worker_status
{
	my ($node, $cols, $dbname) = @_;
	return query_retry($node,
		"SELECT $cols FROM signalbus_status WHERE database = 'postgres'",
		undef, $dbname);
}

=item wait_worker_status($node, $cond, $what, $timeout = 30, $dbname = 'postgres')

Asserts (C<$what>) that database postgres's worker row satisfies C<$cond>
within C<$timeout> seconds.

=cut

sub wait_worker_status
{
	my ($node, $cond, $what, $timeout, $dbname) = @_;
	return Test::More::ok(
		wait_for_sql(
			$node,
			"SELECT count(*) FROM signalbus_status WHERE database = 'postgres' AND ($cond)",
			'1', $timeout // 30, $dbname),
		$what);
}

=item wait_new_worker($node, $oldpid, $dbname = 'postgres')

Waits up to 60 s (through a crash-restart) for a worker of database
postgres other than C<$oldpid>; returns its pid, or '' if none came.

=cut

sub wait_new_worker
{
	my ($node, $oldpid, $dbname) = @_;
	my $deadline = time + 60;
	my $pid = '';
	while (time < $deadline)
	{
		$pid = eval {
			$node->safe_psql($dbname // 'postgres',
				"SELECT pid FROM signalbus_status WHERE database = 'postgres' AND pid <> $oldpid");
		} // '';
		last if $pid =~ /^\d+$/;
		sleep 0.2;
	}
	return $pid;
}

=item wait_rows_below($node, $table, $n, $timeout = 30)

Waits until at most C<$n> rows of C<$table> are left (a drain is under way);
returns the last count.

=cut

sub wait_rows_below
{
	my ($node, $table, $n, $timeout) = @_;
	my $deadline = time + ($timeout // 30);
	my $c;
	while (time < $deadline)
	{
		$c = query_retry($node, "SELECT count(*) FROM $table");
		return $c if $c <= $n;
		sleep 0.05;
	}
	Test::More::diag("$table still has $c rows after " . ($timeout // 30) . ' s');
	return $c;
}

=item check_arrived($queue, \@ids, $what)

Reads everything C<$queue> holds (waiting up to 60 s for at least as many
messages as ids) and asserts that every id in C<@ids> arrived at least once
(C<"$what: every committed id arrived (lost: N)">) and that no other id did;
notes the duplicates.  Returns the number of duplicate messages and the
messages themselves.

=cut

sub check_arrived
{
	my ($queue, $ids, $what) = @_;
	my %want = map { $_ => 1 } @$ids;
	my $msgs = get_messages($queue, count => scalar(@$ids), timeout => 60);
	push @$msgs, @{ get_messages($queue) };
	my %seen;
	$seen{ body_json($_)->{id} }++ for @$msgs;
	my @missing = grep { !$seen{$_} } @$ids;
	my @unexpected = grep { !$want{$_} } sort { $a <=> $b } keys %seen;
	my $dups = @$msgs - keys %seen;
	is(scalar(@missing), 0,
		"$what: every committed id arrived (lost: " . scalar(@missing) . ')')
	  or diag "the broker held "
	  . scalar(@$msgs)
	  . ' messages ('
	  . scalar(keys %seen)
	  . ' distinct ids) for '
	  . scalar(@$ids)
	  . ' committed rows; missing ids (first 20): '
	  . join(',', @missing[ 0 .. ($#missing < 19 ? $#missing : 19) ]);
	is("@unexpected[0 .. ($#unexpected < 19 ? $#unexpected : 19)]",
		'', "$what: no unexpected id");
	note "$what: "
	  . scalar(@$msgs)
	  . ' messages for '
	  . scalar(@$ids)
	  . " committed rows: $dups duplicates ("
	  . scalar(grep { $seen{$_} > 1 } keys %seen)
	  . ' ids more than once)';
	return ($dups, $msgs);
}

=item freeze_worker($node, $dbname = 'postgres'), thaw_worker()

SIGSTOPs the worker of database C<postgres> (its pid read from
signalbus_status in C<$dbname>) while it waits on its latch: then it holds
no lock and no LWLock (committing backends would hang on its slot's) and is
in no transaction; retries if it was caught doing something else.
thaw_worker() sends SIGCONT; so does the end of the script, whatever
happens.

=cut

my $frozen;
END { kill 'CONT', $frozen if $frozen; }

sub freeze_worker
{
	my ($node, $dbname) = @_;
	$dbname //= 'postgres';
	for my $try (1 .. 100)
	{
		my $pid = $node->safe_psql($dbname,
			"SELECT pid FROM signalbus_status WHERE database = 'postgres'");
		die "no worker pid" unless $pid =~ /^\d+$/;
		kill 'STOP', $pid or die "kill -STOP $pid: $!";
		$frozen = $pid;
		return $pid
		  if $node->safe_psql($dbname, qq{
			SELECT (SELECT wait_event FROM pg_stat_activity WHERE pid = $pid) = 'Extension'
			   AND NOT EXISTS (SELECT FROM pg_locks WHERE pid = $pid)}) eq 't';
		kill 'CONT', $pid;
		$frozen = undef;
		sleep 0.05;
	}
	die 'could not catch the worker waiting on its latch';
}

sub thaw_worker
{
	kill 'CONT', $frozen if $frozen;
	$frozen = undef;
	return;
}

=item worker_log_lines($node, $offset = 0)

The server log's lines (from byte C<$offset>) written by the worker of
database C<postgres>.

=cut

sub worker_log_lines
{
	my ($node, $from) = @_;
	return grep { /signalbus worker for database "postgres"/ }
	  split /\n/, PostgreSQL::Test::Utils::slurp_file($node->logfile, $from);
}

=back

=cut

1;
