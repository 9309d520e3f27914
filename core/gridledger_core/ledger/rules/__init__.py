"""One module of `process_<body>` rules per area of the ledger; each exports RULES, a map
from the Transaction oneof field name to its rule."""
