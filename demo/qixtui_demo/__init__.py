"""A demo shop on NATS, choreographed and orchestrated, for `qixtui demo` and the tests."""

from pathlib import Path

HERE = Path(__file__).parent
RULES_PATH = HERE / "rules.toml"  # correlation rules under which each order is one flow
SAGAS_DIR = HERE / "sagas"
SHOP_SAGA = SAGAS_DIR / "shop.toml"
