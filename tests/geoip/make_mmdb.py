"""Writes a small MaxMind City database for the geoip tests (never downloaded).

Usage: make_mmdb.py OUT.mmdb
81.2.69.0/24 is London, 2.125.160.0/19 is Boxford (MaxMind's own test ranges); the
rest of the address space is unknown.
"""
import sys

from mmdb_writer import MMDBWriter
from netaddr import IPSet

LONDON = {
    "city": {"geoname_id": 2643743, "names": {"en": "London"}},
    "continent": {"code": "EU", "names": {"en": "Europe"}},
    "country": {"iso_code": "GB", "names": {"en": "United Kingdom"}},
    "location": {"latitude": 51.5142, "longitude": -0.0931, "time_zone": "Europe/London", "accuracy_radius": 10},
    "postal": {"code": "EC2V"},
    "subdivisions": [{"iso_code": "ENG", "names": {"en": "England"}}],
}
BOXFORD = {
    "city": {"names": {"en": "Boxford"}},
    "continent": {"code": "EU", "names": {"en": "Europe"}},
    "country": {"iso_code": "GB", "names": {"en": "United Kingdom"}},
    "location": {"latitude": 51.75, "longitude": -1.25, "time_zone": "Europe/London", "accuracy_radius": 100},
    "postal": {"code": "OX1"},
    "subdivisions": [{"iso_code": "ENG", "names": {"en": "England"}}],
}

writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoIP2-City", languages=["en"],
                    description="Sluice test database")
writer.insert_network(IPSet(["81.2.69.0/24"]), LONDON)
writer.insert_network(IPSet(["2.125.160.0/19"]), BOXFORD)
writer.to_db_file(sys.argv[1])
