
# signalbus.databases names several databases: each gets its own worker.
# A database that does not exist yet waits ('waiting for database') and gets
# its worker once created; a database without the extension waits ('waiting
# for extension') and starts sending after CREATE EXTENSION.  Rows committed
# in two databases at once arrive in their own queues.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);
use SignalBusTest;

my $QPG = '050.postgres';
my $QDB2 = '050.db2';
my $N = 200;

my $node = new_node(
	'twodbs',
	databases => 'postgres, db2, db_missing',
	flush_interval => '1s');
$node->start;
declare_queue($_) for $QPG, $QDB2;

sub status_of
{
	my ($db, $cols) = @_;
	return $node->safe_psql('postgres',
		"SELECT $cols FROM signalbus_status WHERE database = '$db'");
}

$node->safe_psql('postgres', qq{
	CREATE EXTENSION signalbus;
	CREATE TABLE s050 (id int PRIMARY KEY, db text DEFAULT current_database());
	SELECT signalbus_register('s050', routing_key => '$QPG');
});

is( $node->safe_psql(
		'postgres', 'SELECT string_agg(database::text, \',\') FROM signalbus_status'),
	'postgres,db2,db_missing',
	'one status row per database named in signalbus.databases, in order');
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) = 2 FROM signalbus_status
		  WHERE database IN ('db2', 'db_missing')
		    AND state = 'waiting for database' AND pid IS NULL"),
	'databases that do not exist: state "waiting for database", no pid');
ok( $node->poll_query_until(
		'postgres',
		"SELECT state = 'idle' AND pid IS NOT NULL FROM signalbus_status
		  WHERE database = 'postgres'"),
	'the worker of postgres runs');

# --- db2 appears ------------------------------------------------------------
my $t0 = time;
$node->safe_psql('postgres', 'CREATE DATABASE db2');
ok( $node->poll_query_until(
		'postgres',
		"SELECT state = 'waiting for extension' AND pid IS NOT NULL
		   FROM signalbus_status WHERE database = 'db2'"),
	'db2 created: its worker starts and waits for the extension');
my $started = time - $t0;
note sprintf 'worker of db2 started %.1f s after CREATE DATABASE', $started;
cmp_ok($started, '<', 15, 'within the launcher\'s recheck interval (~10 s)');

# rows in db2 before the extension exists: a plain table, nothing to send;
# the worker stays put (no crash loop)
my $pid_db2 = status_of('db2', 'pid');
sleep 2.5;    # > 2 flush intervals: the worker looks for the extension again
is(status_of('db2', 'state || \' \' || pid'), "waiting for extension $pid_db2",
	'db2 worker keeps waiting for the extension (same pid)');

$node->safe_psql('db2', qq{
	CREATE EXTENSION signalbus;
	CREATE TABLE s050 (id int PRIMARY KEY, db text DEFAULT current_database());
	SELECT signalbus_register('s050', routing_key => '$QDB2');
	INSERT INTO s050 (id) VALUES (0);
});
my $m = get_messages($QDB2, count => 1, timeout => 30);
is(scalar(@$m) && body_json($m->[0])->{db}, 'db2',
	'after CREATE EXTENSION in db2 its rows are sent');
ok(wait_for_sql($node, 'SELECT count(*) FROM s050', '0', 30, 'db2'),
	'db2 table drained');
ok( $node->poll_query_until(
		'postgres',
		"SELECT state = 'idle' FROM signalbus_status WHERE database = 'db2'"),
	'db2 worker idle');
is(status_of('db2', 'pid'), $pid_db2, 'same db2 worker (no restart)');

# --- both databases at once ---------------------------------------------------
my $s1 = $node->background_psql('postgres');
my $s2 = $node->background_psql('db2');
$s1->query_safe("BEGIN; INSERT INTO s050 (id) SELECT g FROM generate_series(1, $N) g;");
$s2->query_safe("BEGIN; INSERT INTO s050 (id) SELECT g FROM generate_series(1, $N) g;");
$s1->query_safe('COMMIT');
$s2->query_safe('COMMIT');
$s1->quit;
$s2->quit;

for ([ 'postgres', $QPG ], [ 'db2', $QDB2 ])
{
	my ($db, $q) = @$_;
	my $msgs = get_messages($q, count => $N, timeout => 30);
	ok(wait_for_sql($node, 'SELECT count(*) FROM s050', '0', 30, $db),
		"$db: table drained");
	push @$msgs, @{ get_messages($q) };    # duplicates, if any
	my (%ids, %dbs);
	for (@$msgs)
	{
		my $b = body_json($_);
		$ids{ $b->{id} }++;
		$dbs{ $b->{db} }++;
	}
	my @missing = grep { !$ids{$_} } 1 .. $N;
	is("@missing", '', "$db: all $N rows arrived in queue $q")
	  or diag scalar(@$msgs) . " messages in $q";
	is(join(',', sort keys %dbs), $db, "$db: queue $q holds only rows of $db");
	my @dups = grep { $ids{$_} > 1 } keys %ids;
	note "$db: " . scalar(@$msgs) . ' messages, ' . scalar(@dups) . ' duplicated ids';
}

my $st = $node->safe_psql('postgres',
	'SELECT database, state, sent, pid IS NOT NULL FROM signalbus_status ORDER BY 1');
note "status:\n$st";
is( $node->safe_psql(
		'postgres',
		"SELECT string_agg(database || ':' || (sent >= $N + (database = 'db2')::int)::text, ',' ORDER BY database)
		   FROM signalbus_status WHERE database IN ('postgres', 'db2')"),
	'db2:true,postgres:true',
	'each worker counts its own database\'s rows');
is( status_of('db_missing', 'state || \' \' || coalesce(pid::text, \'-\')'),
	'waiting for database -',
	'db_missing still waits for its database');

my $log = slurp_file($node->logfile);
my $n_missing = () = $log =~
  /database "db_missing" named in signalbus\.databases does not exist/g;
is($n_missing, 1, 'the missing database is logged once, not at every recheck');
unlike($log, qr/signalbus worker.*(ERROR|FATAL)|server process .* was terminated/,
	'no worker errors or crashes in the log');

$node->stop;
done_testing();
