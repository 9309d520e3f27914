"""Prometheus metrics of the agent's new-energy work (readings metrics are in readings.py
and sender.py)."""

from prometheus_client import Counter

CONTRACTS = Counter("gridledger_meter_contracts",
                    "Supply contracts signed: committed by this meter, or terms signed by this "
                    "plant.", ["role"])
COINS_RECEIVED = Counter("gridledger_meter_carbon_coins_received",
                         "Carbon coins (grams CO2) received with certificates by this meter.")
COINS_ISSUED = Counter("gridledger_issuer_carbon_coins_issued",
                       "Carbon coins (grams CO2) issued by this issuer and committed.")
CERTIFICATES_ISSUED = Counter("gridledger_issuer_certificates_issued",
                              "Carbon certificates issued by this issuer and committed.")
ANNOUNCEMENTS = Counter("gridledger_plant_announcements",
                        "Plant announcements submitted, by outcome.", ["result"])
TRADE_ENDS = Counter("gridledger_meter_trade_ends", "Trade ends committed by this meter.")
DIRECTORY_HINTS = Counter("gridledger_meter_directory_hints",
                          "Plants neighbours told this agent about, by whether the ledger "
                          "confirmed them.", ["result"])
ENERGY_ERRORS = Counter("gridledger_meter_energy_errors",
                        "Failures of the energy loop (network or refusals), by kind.", ["kind"])
