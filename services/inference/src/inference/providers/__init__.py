"""Provider adapters: one small interface (base.Provider), three implementations."""
