-- The registry database; tenantd creates the data-plane databases itself.
CREATE DATABASE tenantd_registry;
