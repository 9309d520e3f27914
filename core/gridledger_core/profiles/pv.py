"""PV output per kWp from real weather: a typical meteorological year bundled with pvlib.

Weather: TMY3 file ``723170TYA.CSV`` (Greensboro, NC, USA; NREL TMY3) shipped in pvlib's
data directory, read once per process with ``pvlib.iotools.read_tmy3``. Rows are
hour-ending in local standard time: row ``h`` (0 ... 8759) holds the hour
``[h, h + 1)`` of the typical year.

Model, per hour (solar position at mid-hour):
1. plane-of-array irradiance, Hay-Davies transposition
   (``pvlib.irradiance.get_total_irradiance``) for the array's tilt and azimuth;
2. cell temperature, Sandia (SAPM) model for the mounting;
3. DC power, PVWatts with a temperature coefficient of -0.37 %/K, less PVWatts' default
   system losses (14.08 %: soiling, wiring, mismatch, availability ...);
4. AC power, PVWatts inverter with a DC/AC ratio of 1.2 (so clear noons clip).
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

TMY_FILE = "723170TYA.CSV"
_GAMMA_PDC = -0.0037
_DC_AC_RATIO = 1.2
HOURS_PER_TYPICAL_YEAR = 8760


@dataclass(frozen=True)
class TypicalWeather:
    """Hourly weather of the typical year (numpy arrays of length 8760)."""

    latitude: float
    longitude: float
    altitude: float
    utc_offset_s: int
    name: str
    ghi: np.ndarray
    dni: np.ndarray
    dhi: np.ndarray
    temp_air: np.ndarray
    wind_speed: np.ndarray


@lru_cache(maxsize=1)
def typical_weather() -> TypicalWeather:
    """Read the bundled TMY3 file (cached: pvlib and pandas are slow to load)."""
    import pvlib
    from pvlib.iotools import read_tmy3

    path = os.path.join(os.path.dirname(pvlib.__file__), "data", TMY_FILE)
    data, meta = read_tmy3(path, coerce_year=2023, map_variables=True)
    if len(data) != HOURS_PER_TYPICAL_YEAR:
        raise ValueError(f"{TMY_FILE}: expected 8760 hourly rows, got {len(data)}")

    def column(name: str) -> np.ndarray:
        values = data[name].to_numpy(dtype=np.float64)
        values.setflags(write=False)
        return values

    return TypicalWeather(
        latitude=float(meta["latitude"]),
        longitude=float(meta["longitude"]),
        altitude=float(meta["altitude"]),
        utc_offset_s=round(float(meta["TZ"]) * 3600),
        name=str(meta["Name"]).strip('"'),
        ghi=column("ghi"),
        dni=column("dni"),
        dhi=column("dhi"),
        temp_air=column("temp_air"),
        wind_speed=column("wind_speed"),
    )


@lru_cache(maxsize=16)
def ac_watts_per_kwp(tilt_deg: float, azimuth_deg: float, mount: str) -> np.ndarray:
    """AC power (W) of a 1 kWp array for each hour of the typical year (cached)."""
    import pandas as pd
    import pvlib

    weather = typical_weather()
    tz = _fixed_zone(weather.utc_offset_s)
    # Mid-hour timestamps: row h covers [h, h+1) local standard time.
    times = pd.date_range("2023-01-01 00:30", periods=HOURS_PER_TYPICAL_YEAR, freq="h", tz=tz)
    sun = pvlib.solarposition.get_solarposition(
        times, weather.latitude, weather.longitude, altitude=weather.altitude
    )
    poa = pvlib.irradiance.get_total_irradiance(
        tilt_deg,
        azimuth_deg,
        sun["apparent_zenith"].to_numpy(),
        sun["azimuth"].to_numpy(),
        weather.dni,
        weather.ghi,
        weather.dhi,
        dni_extra=pvlib.irradiance.get_extra_radiation(times.day_of_year.to_numpy()),
        model="haydavies",
    )
    poa_global = np.nan_to_num(np.asarray(poa["poa_global"], dtype=np.float64), nan=0.0)
    poa_global = np.clip(poa_global, 0.0, None)
    params = pvlib.temperature.TEMPERATURE_MODEL_PARAMETERS["sapm"][mount]
    temp_cell = pvlib.temperature.sapm_cell(
        poa_global, weather.temp_air, weather.wind_speed, **params
    )
    dc = pvlib.pvsystem.pvwatts_dc(poa_global, temp_cell, 1000.0, _GAMMA_PDC)
    dc = np.asarray(dc, dtype=np.float64) * (1.0 - pvlib.pvsystem.pvwatts_losses() / 100.0)
    ac = pvlib.inverter.pvwatts(dc, 1000.0 / _DC_AC_RATIO)
    ac = np.clip(np.nan_to_num(np.asarray(ac, dtype=np.float64), nan=0.0), 0.0, None)
    ac.setflags(write=False)
    return ac


def _fixed_zone(utc_offset_s: int) -> dt.timezone:
    return dt.timezone(dt.timedelta(seconds=utc_offset_s))
