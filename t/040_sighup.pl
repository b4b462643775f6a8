
# signalbus.amqp_url is reloaded on SIGHUP: a node started with a URL where
# no broker listens keeps its rows pending and says why; ALTER SYSTEM + a
# reload to the real broker sends them.  The broker's password is never
# shown: not to non-superusers (SHOW), not in signalbus_status, not in the
# server log, not in error messages.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);
use SignalBusTest;

my $Q = '040.sighup';
my $PORT = $ENV{SB_AMQP_PORT};
# a dedicated RabbitMQ user with a distinctive password, so that grepping
# for the password means something
my $USER = 'sb040';
my $PASS = 'Sb040pw-Xq7zK9';
my $WRONG = 'Wr0ngPw-040zz';
my $DEAD_URL = "amqp://$USER:$PASS\@localhost:1/%2f";
my $WRONG_URL = "amqp://$USER:$WRONG\@localhost:$PORT/%2f";
my $GOOD_URL = "amqp://$USER:$PASS\@localhost:$PORT/%2f";

eval { broker_ctl('delete_user', $USER) };    # left over by an aborted run
broker_ctl('add_user', $USER, $PASS);
broker_ctl('set_permissions', '-p', '/', $USER, '.*', '.*', '.*');
my $user_created = 1;
END { eval { broker_ctl('delete_user', $USER) } if $user_created; }

my $node = new_node(
	'sighup',
	amqp_url => $DEAD_URL,
	flush_interval => '1s',
	# PostgreSQL::Test::Cluster logs every statement; this test's own
	# statements (ALTER SYSTEM ... URL) would put the password in the log
	conf => ["log_statement = 'none'"]);
$node->start;
declare_queue($Q);

$node->safe_psql('postgres', qq{
	CREATE EXTENSION signalbus;
	CREATE TABLE s040 (id int PRIMARY KEY, v text);
	SELECT signalbus_register('s040', routing_key => '$Q');
	CREATE ROLE sb040_reader LOGIN;
	INSERT INTO s040 SELECT g, 'x' FROM generate_series(1, 3) g;
});

sub status { return worker_status($node, @_) }

# --- no broker at the configured URL ---------------------------------------
ok( $node->poll_query_until(
		'postgres',
		"SELECT state = 'backoff' AND last_error LIKE 'could not connect to AMQP broker%'
		   FROM signalbus_status WHERE database = 'postgres'"),
	'worker in backoff with a connection error');
note 'status: ' . status('state, broker, last_error');
is(status('broker'), "amqp://$USER\@localhost:1/%2f",
	'status shows the broker URL without the password');
like(status('last_error'), qr{amqp://$USER\@localhost:1/%2f},
	'last_error names the broker (without password)');
is($node->safe_psql('postgres', 'SELECT count(*) FROM s040'),
	'3', 'rows stay pending');
is(queue_length($Q), 0, 'the broker holds nothing');

my ($out, $err) = ('', '');
$node->psql(
	'postgres',
	"\\set VERBOSITY verbose\nSELECT signalbus_flush();",
	stdout => \$out,
	stderr => \$err);
note "signalbus_flush(): $err";
like($err, qr/ERROR:\s+08001:.*amqp:\/\/$USER\@localhost:1\/%2f/,
	'signalbus_flush() fails with 08001 naming the broker');
unlike($err, qr/\Q$PASS\E/, 'the flush error does not show the password');

# --- a non-superuser cannot read the setting -------------------------------
($out, $err) = ('', '');
$node->psql(
	'postgres',
	"\\set VERBOSITY verbose\nSHOW signalbus.amqp_url;",
	stdout => \$out,
	stderr => \$err,
	extra_params => [ '-U', 'sb040_reader' ]);
like($err, qr/ERROR:\s+42501:/, 'SHOW signalbus.amqp_url as non-superuser: 42501');
unlike("$out$err", qr/\Q$PASS\E/, '... and shows nothing of it');
($out, $err) = ('', '');
$node->psql(
	'postgres',
	"\\set VERBOSITY verbose\nSELECT current_setting('signalbus.amqp_url');",
	stdout => \$out,
	stderr => \$err,
	extra_params => [ '-U', 'sb040_reader' ]);
like($err, qr/ERROR:\s+42501:/, 'current_setting() as non-superuser: 42501');
($out, $err) = ('', '');
$node->psql(
	'postgres',
	"SELECT count(*) FROM pg_settings WHERE name = 'signalbus.amqp_url';
	 SELECT broker FROM signalbus_status WHERE database = 'postgres';",
	stdout => \$out,
	stderr => \$err,
	extra_params => [ '-U', 'sb040_reader' ]);
is("$out|$err", "0\namqp://$USER\@localhost:1/%2f|",
	'non-superuser: pg_settings hides it, signalbus_status shows no password');
is($node->safe_psql('postgres', 'SHOW signalbus.amqp_url'),
	$DEAD_URL, 'a superuser can SHOW it');

# --- reload: a reachable broker, wrong password ------------------------------
my $offset = -s $node->logfile;
$node->safe_psql('postgres', qq{
	ALTER SYSTEM SET signalbus.amqp_url = '$WRONG_URL';
	SELECT pg_reload_conf();
});
ok( $node->poll_query_until(
		'postgres',
		"SELECT broker = 'amqp://$USER\@localhost:$PORT/%2f'
		        AND last_error LIKE '%login%'
		   FROM signalbus_status WHERE database = 'postgres'"),
	'after reload: status shows the new broker and a login error');
note 'status: ' . status('state, broker, last_error');
unlike(status('last_error'), qr/\Q$WRONG\E/, 'the login error shows no password');
is($node->safe_psql('postgres', 'SELECT count(*) FROM s040'),
	'3', 'rows still pending with a wrong password');

# let the worker fail a few times: its backoff grows (default max 60 s)
sleep 3;

# --- reload: the right URL ------------------------------------------------
$offset = -s $node->logfile;
my $t0 = time;
$node->safe_psql('postgres', qq{
	ALTER SYSTEM SET signalbus.amqp_url = '$GOOD_URL';
	SELECT pg_reload_conf();
});
my $msgs = get_messages($Q, count => 3, timeout => 30);
my $elapsed = time - $t0;
is(join(',', sort map { body_json($_)->{id} } @$msgs),
	'1,2,3', 'after reload to the real broker the pending rows arrive');
note sprintf 'rows arrived %.1f s after the reload', $elapsed;
cmp_ok($elapsed, '<', 10, 'the reload reconnects at once (backoff reset)');
ok(wait_for_sql($node, 'SELECT count(*) FROM s040', '0'), 'table drained');
ok( wait_for_sql(
		$node,
		"SELECT state || ' ' || broker FROM signalbus_status WHERE database = 'postgres'",
		"idle amqp://$USER\@localhost:$PORT/%2f"),
	'status: idle, broker updated');
my $deadline = time + 30;
sleep 0.1
  until slurp_file($node->logfile, $offset) =~
  /signalbus worker for database "postgres" connected to amqp:\/\/$USER\@localhost:$PORT\/%2f/
  || time > $deadline;
like(
	slurp_file($node->logfile, $offset),
	qr/signalbus worker for database "postgres" connected to amqp:\/\/$USER\@localhost:$PORT\/%2f/,
	'the log says the worker connected to the new broker');

# the fast path works with the new URL
$node->safe_psql('postgres', q{INSERT INTO s040 VALUES (4, 'y')});
$msgs = get_messages($Q, count => 1, timeout => 30);
is(scalar(@$msgs) && body_json($msgs->[0])->{id}, 4, 'a new row is sent at once');

# --- the password appears nowhere --------------------------------------------
is( $node->safe_psql(
		'postgres',
		"SELECT count(*) FROM signalbus_status s
		  WHERE strpos(s::text, '$PASS') > 0 OR strpos(s::text, '$WRONG') > 0"),
	'0',
	'no password in signalbus_status');
is( $node->safe_psql(
		'postgres',
		"SELECT count(*) FROM pg_stat_activity a
		  WHERE pid <> pg_backend_pid()
		    AND (strpos(a::text, '$PASS') > 0 OR strpos(a::text, '$WRONG') > 0)"),
	'0',
	'no password in pg_stat_activity');

$node->stop;
my $log = slurp_file($node->logfile);
# PostgreSQL itself logs 'parameter "signalbus.amqp_url" changed to "<url>"'
# when the postmaster reloads: that line is core's, checked separately below
my @core = grep { /parameter "signalbus\.amqp_url" changed to/ } split /\n/, $log;
my @leaks = grep { /\Q$PASS\E|\Q$WRONG\E/ && !/parameter "signalbus\.amqp_url" changed to/ }
  split /\n/, $log;
is(scalar @leaks, 0, 'no password in the server log (signalbus\'s own lines)')
  or diag join("\n", @leaks);
TODO:
{
	local $TODO = 'PostgreSQL core logs the new value of a reloaded setting';
	is(scalar(grep { /\Q$PASS\E|\Q$WRONG\E/ } @core),
		0, 'no password in the server log at all');
}

done_testing();
