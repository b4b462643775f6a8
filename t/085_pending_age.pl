
# signalbus_pending: the row count and, with track_commit_timestamp on, how
# long ago the oldest pending row was committed; both go back to nothing once
# the broker has the rows.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep);
use SignalBusTest;

my $Q = '085.age';

my $node = new_node('pending_age', flush_interval => '1h',
	conf => ['track_commit_timestamp = on']);
$node->start;
declare_queue($Q);

# a database no worker serves: only signalbus_flush() sends here
$node->safe_psql('postgres', 'CREATE DATABASE other');
$node->safe_psql('other', qq{
	CREATE EXTENSION signalbus;
	CREATE TABLE s085 (id int PRIMARY KEY, v text);
	SELECT signalbus_register('s085', routing_key => '$Q', autoflush => false);
	INSERT INTO s085 VALUES (1, 'old');
});
sleep 1.2;
$node->safe_psql('other', q{INSERT INTO s085 VALUES (2, 'new')});

is( $node->safe_psql('other',
		q{SELECT pending, oldest_age >= interval '1 second', oldest_age < interval '1 minute'
		  FROM signalbus_pending WHERE signal = 's085'::regclass}),
	'2|t|t',
	'two rows pending; the oldest was committed more than a second ago');

is($node->safe_psql('other', q{SELECT signalbus_flush('s085')}),
	'2', 'signalbus_flush() sends both');
my $msgs = get_messages($Q, count => 2, timeout => 30);
is( join(',', sort map { body_json($_)->{id} } @$msgs),
	'1,2', 'the broker holds both rows')
  or diag explain $msgs;

is( $node->safe_psql('other',
		q{SELECT pending, oldest_age IS NULL FROM signalbus_pending
		  WHERE signal = 's085'::regclass}),
	'0|t',
	'nothing pending, no age');

# without track_commit_timestamp the age is NULL, the count still there
$node->append_conf('postgresql.conf', 'track_commit_timestamp = off');
$node->restart;
$node->safe_psql('other', q{INSERT INTO s085 VALUES (3, 'x')});
is( $node->safe_psql('other',
		q{SELECT pending, oldest_age IS NULL FROM signalbus_pending
		  WHERE signal = 's085'::regclass}),
	'1|t',
	'track_commit_timestamp off: the count, no age');
is($node->safe_psql('other', q{SELECT signalbus_flush('s085')}),
	'1', 'the row is sent');
is(scalar @{ get_messages($Q, count => 1, timeout => 30) },
	1, 'the broker holds it');

$node->stop;
done_testing();
