"""Seeded, reproducible energy profiles for simulated meters and plants.

PV comes from pvlib's bundled typical-meteorological-year weather, household load from the
BDEW H0 standard load profile. Any timestamp maps onto the typical year, so profiles work
for any date; the same seed always yields the same energy for the same interval.
"""

from gridledger_core.profiles.energy import SlotProfile
from gridledger_core.profiles.household import HouseholdProfile
from gridledger_core.profiles.plant import PlantProfile
from gridledger_core.profiles.timegrid import SLOT_SECONDS

__all__ = ["SLOT_SECONDS", "HouseholdProfile", "PlantProfile", "SlotProfile"]
