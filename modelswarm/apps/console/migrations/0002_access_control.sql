-- access control tables: added by the main session
SELECT 1;
