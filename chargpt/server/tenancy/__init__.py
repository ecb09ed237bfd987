"""Tenants on one deployment: who is calling (keys → principals), what they may see, and their quotas."""
