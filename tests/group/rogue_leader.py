"""A group member that leads its consumer group and, in its first assignment, gives one
partition to no one: the state Tansu 0.6's coordinator left a lane in during a chaos run
(after a burst of session timeouts, three members held assignments from different
generations; two partitions were consumed twice and three by no one, for eight minutes).

It joins first (so the broker makes it the leader), speaks the group protocol the
librdkafka members ask for ("cooperative-sticky"), takes no partition itself, and keeps
its session alive. Every later assignment is a plain round robin over the other members,
so a rejoin by any member heals the group.

Usage: rogue_leader.py BOOTSTRAP GROUP TOPIC SKIPPED_PARTITION
Prints "leading" once it holds the group, then one line per assignment it makes
("assignment N: partitions [..] to K members").
"""
import collections
import sys

from kafka import KafkaConsumer
from kafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from kafka.coordinator.protocol import ConsumerProtocolMemberAssignment_v0, ConsumerProtocolMemberMetadata_v0

bootstrap, group, topic, skipped = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])


class Rogue(AbstractPartitionAssignor):
    name = "cooperative-sticky"
    version = 0
    rounds = 0
    # Assignments made with other members in the group; the first of them skips.
    given = 0

    @classmethod
    def assign(cls, cluster, members):
        cls.rounds += 1
        partitions = sorted(cluster.partitions_for_topic(topic) or [])
        # Itself it tells apart by the user data it subscribes with.
        others = sorted(m for m in members if members[m].user_data != b"rogue")
        cls.given += bool(others)
        plan = collections.defaultdict(list)
        give = [p for p in partitions if not (cls.given == 1 and p == skipped)]
        for i, p in enumerate(give):
            if others:
                plan[others[i % len(others)]].append(p)
        given = sorted(p for m in others for p in plan[m])
        print(f"assignment {cls.given}: partitions {given} to {len(others)} members", flush=True)
        return {m: ConsumerProtocolMemberAssignment_v0(0, [(topic, plan[m])] if plan.get(m) else [], b"")
                for m in members}

    @classmethod
    def metadata(cls, topics):
        return ConsumerProtocolMemberMetadata_v0(0, list(topics), b"rogue")

    @classmethod
    def on_assignment(cls, assignment):
        pass


consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
                         partition_assignment_strategy=[Rogue], session_timeout_ms=30000,
                         heartbeat_interval_ms=1000, max_poll_interval_ms=600000)
print("joining", flush=True)
announced = False
while True:
    # It never reads: polling only keeps the membership (joins, heartbeats, rejoins).
    consumer.poll(timeout_ms=500, max_records=1)
    if not announced and Rogue.rounds:
        print("leading", flush=True)
        announced = True
